"""Helpers for Databricks-style notebooks: widget parameters with a local fallback.

``widget(globals(), "input", default)`` reads a Databricks widget when the notebook runs on
Databricks (where ``dbutils`` is a notebook global) and returns ``default`` elsewhere.
"""
from __future__ import annotations

from typing import Any, Mapping


def widget(notebook_globals: Mapping[str, Any], name: str, default: str) -> str:
    dbutils = notebook_globals.get("dbutils")
    if dbutils is None:
        return default
    dbutils.widgets.text(name, default)
    return dbutils.widgets.get(name)
