"""Keep secrets out of everything textmill logs: MLflow params, the resolved YAML, log lines.

A config value is secret when its key looks like a credential (``secret``, ``password``,
``token``, ``credential``, ``access.key``, ``*.key`` under ``fs.*``, ...), wherever it sits
(``spark.conf`` keys hold dots, so the whole dotted key is matched). Any value that holds a
URI with ``user:password@`` loses the password, and a connection string's secret-named parameter
(Spark Connect's ``sc://host:port/;token=...``, any ``;...key=...`` or ``;password=...``) its
value. Used by ``textmill.runtime.tracking`` and the CLI
on the driver; the config object itself keeps the real values, so jobs still work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***redacted***"

# Key fragments that name credentials. Matched case-insensitively against the whole dotted key.
_SECRET_KEY = re.compile(
    r"(secret|passw(or)?d|passwd|token(?![a-z])|credential|api[._-]?key|access[._-]?key|private[._-]?key|"
    r"sas[._-]?key|account[._-]?key|session[._-]?key|(^|\.)fs\..*\.key$)",
    re.IGNORECASE,
)
# scheme://user:password@host -> scheme://user:***redacted***@host (the user name stays: it helps debugging).
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*):(?P<password>[^@/\s]+)@")


# ;name=value parameters of a connection string (sc://host:port/;token=...;user_id=...), and the
# Authorization header gRPC metadata may carry. The value runs to the next ; or white space or quote.
_PARAMETER = re.compile(r"(?P<head>;\s*(?P<name>[A-Za-z0-9_.\-]+)\s*=[ \t]*)(?P<value>[^;\s'\"]*)")
_SECRET_PARAMETER = re.compile(r"^(authorization|x-api-key|bearer)$", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URI in it replaced, and the value
    of every secret-named ``;name=value`` parameter (a Spark Connect token)."""
    text = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    return _PARAMETER.sub(
        lambda m: (
            f"{m.group('head')}{REDACTED}"
            if m.group("value") and (is_secret_key(m.group("name")) or _SECRET_PARAMETER.match(m.group("name")))
            else m.group(0)
        ),
        text,
    )


def redact_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    if is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return redact_tree(value, prefix=f"{key}.")
    if isinstance(value, list):
        return [redact_value(key, v) for v in value]
    return value


def redact_tree(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy of a nested config dict with secret values replaced (keys are kept)."""
    return {k: redact_value(f"{prefix}{k}", v) for k, v in data.items()}


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``scheme://user:password@host/...`` -> (``scheme://host/...``, user, password); other URIs unchanged."""
    match = re.match(
        r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]*)(:(?P<password>[^@/\s]*))?@(?P<rest>.*)$", uri
    )
    if match is None:
        return uri, None, None
    return match.group("scheme") + match.group("rest"), match.group("user") or None, match.group("password")
