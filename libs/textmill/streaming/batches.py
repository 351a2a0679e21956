"""The per-batch outputs of ``watch``: staged, published by rename, recorded in a commit log.

Layout under the watch's ``io.output``::

    <step>/batch=<id>/                  one directory per step and micro-batch (Parquet + _textmill.json)
    quarantine/batch=<id>/              prepare's quarantined rows of the batch
    _batches/<id>.json                  the commit log, written after every step of the batch is published
    _staging/batch=<id>-<token>/<step>/ an attempt in progress, invisible to readers of <step>/
    _checkpoint/                        Spark's checkpoint (default location)

A reader of ``<output>/<step>`` sees whole batches only: a batch directory appears by one
rename of a directory that was completely written and checked. Spark replays a batch it had
not committed with the same id and the same files; everything here is keyed by that id, so
a replay replaces its own directories instead of adding a second copy, and a batch already
in the commit log (the driver died after publishing, before Spark's own commit) is skipped.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from pyspark.sql import SparkSession

from textmill.data import storage
from textmill.runtime.errors import OutputError

logger = logging.getLogger(__name__)

LOG_DIR = "_batches"
STAGING_DIR = "_staging"
_BATCH_DIR = re.compile(r"^batch=(\d+)$")


class BatchLog:
    """The commit log and the per-batch directories of one watch output."""

    def __init__(self, spark: SparkSession, output: str) -> None:
        self.spark = spark
        self.output = output.rstrip("/")

    def _record_path(self, batch_id: int) -> str:
        return f"{self.output}/{LOG_DIR}/{batch_id}.json"

    def final_dir(self, step: str, batch_id: int) -> str:
        return f"{self.output}/{step}/batch={batch_id}"

    def committed(self, batch_id: int) -> dict | None:
        """The commit record of ``batch_id``, or None when it was never committed."""
        text = storage.read_text(self.spark, self._record_path(batch_id))
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise OutputError(
                f"{self._record_path(batch_id)} is damaged ({exc}); it is written atomically, so "
                "something else wrote it"
            ) from exc

    def records(self) -> list[dict]:
        """Every commit record, by batch id."""
        log = f"{self.output}/{LOG_DIR}"
        ids = sorted(
            int(e.name[:-5]) for e in storage.files(self.spark, log).children(log) if re.fullmatch(r"\d+\.json", e.name)
        )
        return [record for record in (self.committed(i) for i in ids) if record is not None]

    def new_attempt(self, batch_id: int) -> str:
        """A fresh staging directory for ``batch_id``; earlier, unfinished attempts of it are removed
        (the caller holds the output's lock, so they belong to runs that died)."""
        staging = f"{self.output}/{STAGING_DIR}"
        fs = storage.files(self.spark, staging)
        for entry in fs.children(staging):
            if entry.name.startswith(f"batch={batch_id}-"):
                logger.warning("removing %s, an attempt at batch %d that did not finish", entry.uri, batch_id)
                fs.delete(entry.uri)
        return f"{staging}/batch={batch_id}-{uuid.uuid4().hex[:8]}"

    def publish(self, batch_id: int, staged: dict[str, str]) -> None:
        """Rename each staged step directory to ``<step>/batch=<id>``. What an earlier attempt of
        this batch published (for any step) is moved out of the readers' way first."""
        trash = f"{self.output}/{STAGING_DIR}/replaced-{batch_id}-{uuid.uuid4().hex[:8]}"
        replaced = False
        for step in sorted(set(staged) | set(self._steps_holding(batch_id))):
            final = self.final_dir(step, batch_id)
            if storage.path_exists(self.spark, final):
                logger.warning("batch %d: replacing %s, published by an earlier attempt of this batch", batch_id, final)
                storage.move(self.spark, final, f"{trash}/{step}")
                replaced = True
        for step, directory in staged.items():
            storage.move(self.spark, directory, self.final_dir(step, batch_id))
        if replaced:
            storage.delete_path(self.spark, trash)

    def _steps_holding(self, batch_id: int) -> list[str]:
        fs = storage.files(self.spark, self.output)
        return [
            e.name
            for e in fs.children(self.output)
            if e.is_dir and not e.name.startswith(("_", ".")) and fs.info(self.final_dir(e.name, batch_id)) is not None
        ]

    def commit(self, batch_id: int, record: dict) -> None:
        record = {"batch_id": batch_id, "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        storage.write_text_atomic(self.spark, self._record_path(batch_id), json.dumps(record, indent=2, sort_keys=True))

    def batch_ids(self, step: str) -> list[int]:
        """The batch directories published under ``<output>/<step>``."""
        folder = f"{self.output}/{step}"
        return sorted(
            int(m.group(1))
            for e in storage.files(self.spark, folder).children(folder)
            if (m := _BATCH_DIR.match(e.name))
        )
