"""The ``dedup`` job: exact and near-duplicate documents, marked and removed (``textmill.dedup``).

Input: any Parquet table with an id and a text column (``prepare`` output by default). Exact
duplicates share a digest of their normalised text; near duplicates share a MinHash band
bucket and, verified, reach ``dedup.threshold`` Jaccard similarity of their shingle sets.
Groups are the connected components of exact and near pairs; each keeps one representative
(``dedup.representative``).

Outputs (schema ``dedup/v1``, jobs/outputs.md):

- ``io.output``: every good input row with ``dup_group``, ``dup_of``, ``is_representative``,
  ``dup_kind`` and ``jaccard``;
- ``<output>_kept``: the representatives only, the deduplicated table (the input's columns);
- the quarantine (``io.quarantine``, default ``<output>_quarantine``): rows with no id, a
  repeated id, no text or invalid UTF-8, with the reason (``doc_id, reason, detail, raw``).

rows in = kept + removed + quarantined, checked on the written files before publishing.
MLflow: the rates, pair counts, bands x rows with their theoretical error rates, a histogram of
group sizes, and a sample of removed documents beside their representative (``dedup/sample.json``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
from pydantic import Field
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import textmill
from textmill.data import io, storage
from textmill.dedup import transforms
from textmill.dedup.transforms import DedupConf
from textmill.pipelines.prepare import quarantine_path
from textmill.runtime import console, session_kinds
from textmill.runtime.config import JobConf
from textmill.runtime.errors import AccountingError, ColumnNotFoundError, ConfigError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "dedup/v1"
MARK_COLUMNS = ("dup_group", "dup_of", "is_representative", "dup_kind", "jaccard")
REASONS = ("null_doc_id", "duplicate_doc_id", "null_text", "empty_text", "invalid_utf8")


class DedupJobConf(JobConf):
    dedup: DedupConf = Field(default_factory=DedupConf)

    def output_paths(self) -> dict[str, str]:
        if not self.io.output:
            return {}
        return {**super().output_paths(), "io.output (kept)": kept_path(self), "io.quarantine": quarantine_path(self)}


def kept_path(conf: JobConf) -> str:
    return f"{conf.io.output.rstrip('/')}_kept"


JOB_CONF = DedupJobConf


def quarantine_reason(df: DataFrame, c: DedupConf) -> DataFrame:
    """``df`` plus ``_dd_reason``: why a row cannot be compared (null: it can)."""
    ident, text = F.col(c.id_column), F.col(c.text_column)
    # The repeated ids from a shuffle of the ids alone, not of whole rows (texts) by a window.
    repeated_ids = (
        df.groupBy(c.id_column)
        .agg(F.count(F.lit(1)).alias("_dd_n"))
        .where((F.col("_dd_n") > 1) & F.col(c.id_column).isNotNull())
        .select(c.id_column, F.lit(True).alias("_dd_repeated"))
    )
    df = df.join(repeated_ids, c.id_column, "left")
    repeated = F.col("_dd_repeated").isNotNull()
    reason = (
        F.when(ident.isNull(), F.lit("null_doc_id"))
        .when(repeated, F.lit("duplicate_doc_id"))
        .when(text.isNull(), F.lit("null_text"))
        .when(F.trim(text) == "", F.lit("empty_text"))
        .when(~F.is_valid_utf8(text), F.lit("invalid_utf8"))
    )
    return df.withColumn("_dd_reason", reason).drop("_dd_repeated")


def run(spark: SparkSession, conf: DedupJobConf) -> dict[str, float]:
    c = conf.dedup
    columns = [c.id_column, c.text_column] + ([c.time_column] if c.time_column else [])
    source = io.read_input(spark, conf.io.input, columns, hint="dedup.id_column / dedup.text_column")
    io.require_text_column(source, c.text_column)
    clash = [name for name in source.columns if name in MARK_COLUMNS or name.startswith("_dd_")]
    if clash:
        raise ColumnNotFoundError(
            f"the input already has column(s) {', '.join(clash)}, which dedup writes: drop or rename them first "
            f"(if it is dedup's own output, its deduplicated table is {conf.io.input.rstrip('/')}_kept)"
        )
    banding = c.banding()
    console.status(
        logger,
        "dedup: %d bands x %d rows of %d permutations for Jaccard %.2f (theoretical false positives %.4f, "
        "false negatives %.4f)",
        banding.bands,
        banding.rows,
        c.num_perm,
        c.threshold,
        banding.false_positive,
        banding.false_negative,
    )
    checked = quarantine_reason(source, c).persist(StorageLevel.DISK_ONLY)
    try:
        return _dedup(spark, conf, source.columns, checked, banding)
    finally:
        checked.unpersist()


def _dedup(spark: SparkSession, conf: DedupJobConf, columns: list[str], checked: DataFrame, banding) -> dict:
    c = conf.dedup
    reasons = {r["_dd_reason"]: r["count"] for r in checked.groupBy("_dd_reason").count().collect()}
    rows_in = sum(reasons.values())
    good = checked.where(F.col("_dd_reason").isNull()).select(*columns)
    bad = checked.where(F.col("_dd_reason").isNotNull()).select(
        F.col(c.id_column).cast("string").alias("doc_id"),
        F.col("_dd_reason").alias("reason"),
        F.when(F.col("_dd_reason") == "duplicate_doc_id", F.lit(f"{c.id_column} repeated in the input"))
        .when(F.col("_dd_reason") == "invalid_utf8", F.lit("text is not valid UTF-8"))
        .alias("detail"),
        F.to_json(F.struct(*[F.col(f"`{n}`") for n in columns])).alias("raw"),
    )
    found = transforms.mark_duplicates(good, c, banding)
    marked = found.rows.select(*columns, *MARK_COLUMNS)
    out, kept_out, bad_out = conf.io.output, kept_path(conf), quarantine_path(conf)
    parallelism = max(1, session_kinds.default_parallelism(spark))
    with storage.staged_outputs(spark, out, kept_out, bad_out, replace_unmarked=conf.io.replace_unmarked) as staged:
        staged_out, staged_kept, staged_bad = staged
        marked.repartitionByRange(parallelism, c.id_column).sortWithinPartitions(c.id_column).write.parquet(staged_out)
        written = spark.read.parquet(staged_out)
        written.where("is_representative").select(*columns).repartitionByRange(
            parallelism, c.id_column
        ).sortWithinPartitions(c.id_column).write.parquet(staged_kept)
        bad.repartition(1).sortWithinPartitions("doc_id").write.parquet(staged_bad)
        stats = mark_counts(written)
        rows_out, kept = stats["rows"], stats["kept"] or 0
        rows_kept = io.count_parquet(spark, staged_kept)
        rows_quarantined = io.count_parquet(spark, staged_bad)
        if rows_in != rows_out + rows_quarantined or rows_kept != kept:
            raise AccountingError(
                f"dedup: rows_in={rows_in} but rows_out={rows_out} + rows_quarantined={rows_quarantined} "
                f"(kept {rows_kept} of {kept} representatives); nothing was published"
            )
        marker = {"schema": SCHEMA_VERSION, "textmill_version": textmill.__version__}
        storage.write_marker(spark, staged_out, {**marker, "rows": rows_out})
        storage.write_marker(spark, staged_kept, {**marker, "schema": SCHEMA_VERSION + "-kept", "rows": rows_kept})
        storage.write_marker(
            spark, staged_bad, {**marker, "schema": SCHEMA_VERSION + "-quarantine", "rows": rows_quarantined}
        )
    published = spark.read.parquet(out)
    histogram = group_size_histogram(published.groupBy("dup_group").agg(F.count(F.lit(1)).alias("size")))
    _log_artifacts(published, histogram, c)
    exact, near = stats["exact"] or 0, stats["near"] or 0
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_kept": rows_kept,
        "rows_removed": rows_out - rows_kept,
        "rows_quarantined": rows_quarantined,
        **{f"quarantined.{r}": reasons.get(r, 0) for r in REASONS},
        "exact_duplicates": exact,
        "near_duplicates": near,
        "exact_rate": exact / rows_out if rows_out else 0.0,
        "near_rate": near / rows_out if rows_out else 0.0,
        "groups": sum(n for _, n in histogram),
        "duplicate_groups": sum(n for size, n in histogram if size > 1),
        "largest_group": max((size for size, _ in histogram), default=0),
        "candidate_pairs": found.candidate_pairs,
        "verified_pairs": found.verified_pairs,
        "bands": banding.bands,
        "rows_per_band": banding.rows,
        "theoretical_false_positive": banding.false_positive,
        "theoretical_false_negative": banding.false_negative,
        "component_rounds": found.component_rounds,
    }


def mark_counts(marked: DataFrame):
    """One Spark job over written marks: ``rows``, ``kept`` (representatives), ``exact``, ``near``."""
    return marked.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("is_representative").cast("long")).alias("kept"),
        F.sum((F.col("dup_kind") == "exact").cast("long")).alias("exact"),
        F.sum((F.col("dup_kind") == "near").cast("long")).alias("near"),
    ).first()


def group_size_histogram(sizes: DataFrame) -> list[tuple[int, int]]:
    """(group size, number of groups) for every size that occurs, by Spark: one row per size."""
    return sorted(
        (r["size"], r["groups"]) for r in sizes.groupBy("size").agg(F.count(F.lit(1)).alias("groups")).collect()
    )


def _log_artifacts(published: DataFrame, histogram: list[tuple[int, int]], c: DedupConf) -> None:
    """The group-size histogram (JSON and a plot) and a sample of removed documents beside their
    representative, as ``dedup/`` artifacts of the run."""
    mlflow.log_dict({"size_to_groups": [[s, n] for s, n in histogram]}, "dedup/group_sizes.json")
    removed = published.where(~F.col("is_representative")).orderBy(F.xxhash64(c.id_column)).limit(c.sample_size)
    reps = published.where("is_representative").select(
        F.col(c.id_column).alias("dup_of"), F.col(c.text_column).alias("_rep_text")
    )
    sample = [
        {
            "doc_id": r[c.id_column],
            "dup_of": r["dup_of"],
            "kind": r["dup_kind"],
            "jaccard": r["jaccard"],
            "text": r[c.text_column][:600],
            "representative_text": r["_rep_text"][:600],
        }
        for r in removed.join(reps, "dup_of").collect()
    ]
    mlflow.log_dict(sorted(sample, key=lambda s: str(s["doc_id"])), "dedup/sample.json")
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "group_sizes.png"
        _plot(histogram, plot)
        mlflow.log_artifact(str(plot), "dedup")


def _plot(histogram: list[tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if histogram:
        ax.bar([str(s) for s, _ in histogram[:40]], [n for _, n in histogram[:40]])
    ax.set_xlabel("group size (documents)")
    ax.set_ylabel("groups")
    ax.set_yscale("log")
    ax.set_title("dedup: groups by size")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------- watch: one batch at a time

MARKS_SCHEMA, INDEX_SCHEMA = SCHEMA_VERSION + "-marks", SCHEMA_VERSION + "-index"
_KEYED_BY = ("lowercase", "nfkc", "punctuation", "shingle", "shingle_size", "num_perm", "seed")


def index_settings(c: DedupConf) -> dict:
    """The settings an index's keys depend on (normalisation, shingles, permutations, banding)."""
    banding = c.banding()
    return {**{k: getattr(c, k) for k in _KEYED_BY}, "bands": banding.bands, "rows": banding.rows}


def check_index_settings(spark: SparkSession, index_dir: str, c: DedupConf) -> None:
    """A ConfigError when the latest earlier index (``index_dir``) was built with other settings:
    its keys would match nothing, and every copy of an earlier document would go unmarked."""
    marker = storage.read_marker(spark, index_dir) or {}
    before, now = marker.get("dedup"), index_settings(c)
    if before != now:
        changed = ", ".join(
            f"{k}: {(before or {}).get(k)!r} -> {now[k]!r}" for k in now if (before or {}).get(k) != now[k]
        )
        raise ConfigError(
            [
                f"the dedup settings differ from those {index_dir} was indexed with ({changed}): the earlier "
                "batches' keys would match nothing; restore those settings or start a new io.output"
            ]
        )


def write_batch(
    spark: SparkSession,
    prepared: DataFrame,
    rows_in: int,
    c: DedupConf,
    earlier_dirs: list[str],
    marks_dir: str,
    index_dir: str,
    marker: dict,
) -> tuple[dict, DataFrame]:
    """The ``watch`` step: ``prepared`` (one batch's ``prepare`` rows: unique ids, text) marked
    against itself and against the indexes of the earlier batches (``earlier_dirs``), a copy of
    an earlier document joining its group. Writes the marks (``doc_id`` and ``MARK_COLUMNS``) to
    ``marks_dir`` and the batch's own index (``transforms.index_rows``) to ``index_dir``; both are
    staged, checked (rows in = rows marked) and marked here, and published by the caller with the
    rest of the batch, so a batch killed before its commit leaves no index a later batch reads.
    Returns (metrics, the kept rows with ``prepared``'s columns) for the steps after it."""
    banding = c.banding()
    earlier = spark.read.parquet(*earlier_dirs) if earlier_dirs else None
    found = transforms.mark_duplicates(prepared, c, banding, earlier)
    parallelism = max(1, session_kinds.default_parallelism(spark))
    found.rows.select(c.id_column, *MARK_COLUMNS).repartitionByRange(parallelism, c.id_column).sortWithinPartitions(
        c.id_column
    ).write.parquet(marks_dir)
    transforms.index_rows(found.rows, c).repartition(parallelism).write.parquet(index_dir)
    stats = mark_counts(spark.read.parquet(marks_dir))
    if stats["rows"] != rows_in:
        raise AccountingError(f"dedup: rows_in={rows_in} but {stats['rows']} rows marked; nothing was published")
    version = {"textmill_version": textmill.__version__, **marker}
    storage.write_marker(spark, marks_dir, {"schema": MARKS_SCHEMA, **version, "rows": stats["rows"]})
    indexed = io.count_parquet(spark, index_dir)
    storage.write_marker(
        spark, index_dir, {"schema": INDEX_SCHEMA, **version, "rows": indexed, "dedup": index_settings(c)}
    )
    kept = stats["kept"] or 0
    metrics = {
        "rows_in": rows_in,
        "rows_out": stats["rows"],
        "rows_kept": kept,
        "rows_removed": stats["rows"] - kept,
        "exact_duplicates": stats["exact"] or 0,
        "near_duplicates": stats["near"] or 0,
        "copies_of_earlier_batches": found.earlier_copies,
        "candidate_pairs": found.candidate_pairs,
        "verified_pairs": found.verified_pairs,
        "earlier_batches": len(earlier_dirs),
    }
    return metrics, found.rows.where("is_representative").select(*prepared.columns)
