"""Exact and near-duplicate detection as DataFrame transforms (the ``dedup`` job, notebooks).

1. ``with_signatures``: one pandas UDF call per Arrow batch gives each document its exact key
   (a digest of the normalised text), its shingle hashes and its MinHash band keys;
2. ``exact_representatives``: documents with one exact key form an exact group; its
   representative (``rule_order``) alone goes on to the near-duplicate search;
3. ``candidate_pairs``: documents that share a key in any band are candidates. A bucket of n
   documents gives n - 1 *star* edges to its smallest member, never n(n-1)/2 pairs: a
   boilerplate text shared by 100,000 documents costs 100,000 rows, not 5 billion;
4. ``verified_pairs``: a candidate pair is kept when the Jaccard similarity of its two shingle
   sets (computed in the JVM: ``array_intersect`` / ``array_union``) reaches the threshold;
5. ``components``: groups are the connected components of the kept pairs;
6. ``assign_groups``: each group's representative by the configured rule, and for every row
   ``dup_group``, ``dup_of``, ``is_representative``, ``dup_kind`` and ``jaccard``.

``mark_duplicates`` runs them in order. Given the ``index_rows`` of earlier batches (``watch``),
it also compares the new rows with those: a new document with the exact key of an earlier one,
or sharing a band bucket with one (star edge to the bucket's smallest earlier member) and
verified, joins that earlier group, whose representative stays the representative. Earlier
groups are never changed or merged by later rows' edges among themselves, so what a batch
published stays true.

Nothing is collected to the driver but counts and a bounded sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from textmill.dedup import minhash
from textmill.dedup.components import LOCAL_MAX_EDGES, component_labels, in_one_task
from textmill.runtime import console
from textmill.runtime.config import StrictModel

logger = logging.getLogger(__name__)

Rule = Literal["lowest_id", "longest", "earliest"]

# Internal columns: dropped before anything is written.
EXACT, SHINGLES, BANDS = "_dd_exact", "_dd_shingles", "_dd_bands"
EXACT_REP = "_dd_exact_rep"
SIGNATURE_DDL = f"{EXACT} string, {SHINGLES} array<int>, {BANDS} array<bigint>"
# A graph node that stands for a group an earlier batch published: the prefix sorts before any
# real id, so a component that holds one is labelled by it (the smallest earlier group's).
PRIOR = "\x00"
INDEX_COLUMNS = ("doc_id", "dup_group", "representative", "exact", "shingles", "bands")


class DedupConf(StrictModel):
    text_column: str = Field("text", description="the column compared")
    id_column: str = Field("doc_id", description="the document id (unique, not null)")
    lowercase: bool = Field(True, description="normalisation: compare lowercased text")
    nfkc: bool = Field(True, description="normalisation: Unicode NFKC (full-width forms, ligatures folded)")
    punctuation: bool = Field(True, description="normalisation: remove punctuation")
    shingle: Literal["word", "char"] = Field("word", description="shingles are word n-grams or character n-grams")
    shingle_size: int = Field(5, gt=0, description="n of the n-grams (5 words; 5-9 characters are usual)")
    num_perm: int = Field(128, gt=0, le=1024, description="MinHash permutations")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity at which two documents are duplicates")
    bands: int | None = Field(None, gt=0, description="LSH bands; null = chosen from threshold (least weighted error)")
    rows: int | None = Field(None, gt=0, description="signature rows per band; set with bands, or null")
    fp_weight: float = Field(0.5, ge=0, le=1, description="weight of false positives when choosing bands x rows")
    fn_weight: float = Field(0.5, ge=0, le=1, description="weight of false negatives when choosing bands x rows")
    verify: bool = Field(True, description="keep a candidate pair only if its shingle sets' Jaccard reaches threshold")
    representative: Rule = Field(
        "lowest_id", description="a group's kept document: lowest_id, longest (text), earliest (time_column)"
    )
    time_column: str | None = Field(None, description="with representative: earliest, the column that orders time")
    seed: int = Field(1, description="seed of the MinHash permutations")
    max_rounds: int = Field(100, gt=0, description="connected-components rounds at most (a handful is usual)")
    local_max_edges: int = Field(
        LOCAL_MAX_EDGES,
        ge=0,
        description="verified pairs up to this many are grouped in one Spark task by union-find (~200 bytes a "
        "pair); more: Large-Star/Small-Star rounds; 0 = always distributed",
    )
    sample_size: int = Field(50, ge=0, description="removed documents beside their representative, in the artifact")

    @model_validator(mode="after")
    def _consistent(self) -> DedupConf:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set dedup.bands and dedup.rows together, or neither (chosen from dedup.threshold)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            product = self.bands * self.rows
            raise ValueError(f"dedup.bands x dedup.rows = {product} is over dedup.num_perm = {self.num_perm}")
        if self.representative == "earliest" and not self.time_column:
            raise ValueError("dedup.representative: earliest needs dedup.time_column")
        return self

    def banding(self) -> minhash.Banding:
        if self.bands is not None and self.rows is not None:
            return minhash.Banding(
                self.bands,
                self.rows,
                minhash.false_positive_probability(self.threshold, self.bands, self.rows),
                minhash.false_negative_probability(self.threshold, self.bands, self.rows),
            )
        return minhash.choose_bands(self.threshold, self.num_perm, self.fp_weight, self.fn_weight)


def signature_udf(c: DedupConf, banding: minhash.Banding):
    """A pandas UDF: text -> (exact key, shingle hashes as int32, band keys)."""
    perms = minhash.Permutations.make(c.num_perm, c.seed)

    @F.pandas_udf(SIGNATURE_DDL)
    def signatures(texts: pd.Series) -> pd.DataFrame:
        exact, shingles, bands = [], [], []
        for text in texts:
            normalized = minhash.normalize(text, c.lowercase, c.nfkc, c.punctuation)
            hashes = minhash.shingle_hashes(normalized, c.shingle, c.shingle_size)
            exact.append(minhash.exact_key(normalized))
            shingles.append(hashes.view(np.int32))
            bands.append(minhash.band_keys(minhash.signature(hashes, perms), banding.bands, banding.rows))
        return pd.DataFrame({EXACT: exact, SHINGLES: shingles, BANDS: bands})

    return signatures


def with_signatures(df: DataFrame, c: DedupConf, banding: minhash.Banding) -> DataFrame:
    sig = signature_udf(c, banding)(F.col(c.text_column)).alias("_dd_sig")
    return df.select("*", sig).select(*df.columns, "_dd_sig.*")


def rule_order(c: DedupConf) -> list[Column]:
    """How the members of a group are ordered; the first is its representative. Ties: lowest id."""
    ident = F.col(c.id_column).asc()
    if c.representative == "longest":
        return [F.length(c.text_column).desc(), ident]
    if c.representative == "earliest":
        return [F.col(c.time_column).asc_nulls_last(), ident]
    return [ident]


def exact_representatives(signed: DataFrame, c: DedupConf) -> DataFrame:
    """``signed`` plus ``EXACT_REP``: the id of the first document (``rule_order``) with its exact key."""
    first = F.first(F.col(c.id_column)).over(Window.partitionBy(EXACT).orderBy(*rule_order(c)))
    return signed.withColumn(EXACT_REP, first)


def candidate_pairs(reps: DataFrame, c: DedupConf) -> DataFrame:
    """``u, v``: star edges of the band buckets, each bucket's members to its smallest id."""
    exploded = reps.select(F.col(c.id_column).alias("id"), F.posexplode(BANDS).alias("band", "key"))
    centers = (
        exploded.groupBy("band", "key")
        .agg(F.min("id").alias("center"), F.count(F.lit(1)).alias("size"))
        .where(F.col("size") > 1)
        .drop("size")
    )
    return (
        exploded.join(centers, ["band", "key"])
        .where(F.col("id") != F.col("center"))
        .select(F.col("center").alias("u"), F.col("id").alias("v"))
        .distinct()
    )


def jaccard(a: Column, b: Column) -> Column:
    """The Jaccard similarity of two arrays of distinct values (null when both are empty)."""
    union = F.size(F.array_union(a, b))
    return F.when(union > 0, F.size(F.array_intersect(a, b)) / union)


def verified_pairs(pairs: DataFrame, reps: DataFrame, c: DedupConf) -> DataFrame:
    """``u, v, jaccard`` of the pairs at or over the threshold (all pairs when not ``verify``)."""
    shingles = reps.select(F.col(c.id_column).alias("id"), SHINGLES)
    scored = (
        pairs.join(shingles.withColumnsRenamed({"id": "u", SHINGLES: "_su"}), "u")
        .join(shingles.withColumnsRenamed({"id": "v", SHINGLES: "_sv"}), "v")
        .select("u", "v", jaccard(F.col("_su"), F.col("_sv")).alias("jaccard"))
    )
    return scored.where(F.col("jaccard") >= c.threshold) if c.verify else scored


def assign_groups(signed: DataFrame, labels: DataFrame, c: DedupConf) -> DataFrame:
    """Every row of ``signed`` (with ``EXACT_REP``) with ``dup_group`` (the smallest id of its group),
    ``dup_of`` (its representative's id; null for the representative), ``is_representative``,
    ``dup_kind`` (``exact``: the representative's normalised text; ``near``; null for the
    representative) and ``jaccard`` (of its shingles and the representative's; null for the
    representative). ``labels``: ``node, label`` of the exact representatives in a near group."""
    ident = c.id_column
    node_group = labels.select(F.col("node").alias(EXACT_REP), F.col("label").alias("_dd_near"))
    grouped = signed.join(node_group, EXACT_REP, "left")
    group = F.coalesce(F.col("_dd_near"), F.col(EXACT_REP))
    # The smallest id of the group: the near label is the smallest exact representative; an exact
    # group's smallest id may be another member when the rule is not lowest_id.
    in_group = Window.partitionBy("_dd_group")
    grouped = grouped.withColumn("_dd_group", group).withColumn("dup_group", F.min(ident).over(in_group))
    rep = F.first(F.col(ident)).over(Window.partitionBy("_dd_group").orderBy(*rule_order(c)))
    grouped = grouped.withColumn("_dd_rep", rep)
    rep_rows = grouped.where(F.col(ident) == F.col("_dd_rep")).select(
        F.col(ident).alias("_dd_rep"), F.col(EXACT).alias("_dd_rep_exact"), F.col(SHINGLES).alias("_dd_rep_shingles")
    )
    joined = grouped.join(rep_rows, "_dd_rep")
    is_rep = F.col(ident) == F.col("_dd_rep")
    exact = F.col(EXACT) == F.col("_dd_rep_exact")
    return joined.select(
        *signed.columns,
        "dup_group",
        F.when(~is_rep, F.col("_dd_rep")).alias("dup_of"),
        is_rep.alias("is_representative"),
        F.when(is_rep, F.lit(None)).when(exact, F.lit("exact")).otherwise(F.lit("near")).alias("dup_kind"),
        F.when(is_rep, F.lit(None))
        .when(exact, F.lit(1.0))
        .otherwise(jaccard(F.col(SHINGLES), F.col("_dd_rep_shingles")))
        .alias("jaccard"),
    )


def index_rows(marked: DataFrame, c: DedupConf) -> DataFrame:
    """What later batches are compared with (``INDEX_COLUMNS``): one row per exact representative
    of ``marked`` (``assign_groups``' rows), with its group, the group's representative, its
    exact key, shingle hashes and band keys. Exact copies need no row: they share the key."""
    ident = F.col(c.id_column)
    return marked.where(ident == F.col(EXACT_REP)).select(
        ident.cast("string").alias("doc_id"),
        F.col("dup_group").cast("string").alias("dup_group"),
        F.coalesce(F.col("dup_of"), ident).cast("string").alias("representative"),
        F.col(EXACT).alias("exact"),
        F.col(SHINGLES).alias("shingles"),
        F.col(BANDS).alias("bands"),
    )


def earlier_candidates(reps: DataFrame, earlier: DataFrame, c: DedupConf) -> DataFrame:
    """``center, v``: each of this batch's exact representatives (``v``) to the smallest earlier
    member (``center``) of every band bucket they share. ``earlier`` is read once and filtered to
    the buckets this batch has, so a bucket of a million earlier copies costs one pair per new member."""
    new_keys = reps.select(F.col(c.id_column).cast("string").alias("v"), F.posexplode(BANDS).alias("band", "key"))
    old_keys = earlier.select("doc_id", F.posexplode("bands").alias("band", "key")).join(
        new_keys.select("band", "key").distinct(), ["band", "key"], "left_semi"
    )
    centers = old_keys.groupBy("band", "key").agg(F.min("doc_id").alias("center"))
    return new_keys.join(centers, ["band", "key"]).select("center", "v").distinct()


def earlier_edges(candidates: DataFrame, reps: DataFrame, earlier: DataFrame, c: DedupConf) -> DataFrame:
    """``u, v`` from the earlier groups (``u`` = ``PRIOR`` + the group) to this batch's exact
    representatives: for an equal exact key, or for a pair of ``earlier_candidates`` whose shingle
    sets reach the threshold (every pair when not ``verify``)."""
    ident = F.col(c.id_column).cast("string")
    old = earlier.select(F.col("doc_id").alias("center"), "dup_group", F.col("shingles").alias("_so"))
    new = reps.select(ident.alias("v"), F.col(SHINGLES).alias("_sv"))
    scored = (
        candidates.join(old, "center")
        .join(new, "v")
        .select("dup_group", "v", jaccard(F.col("_so"), F.col("_sv")).alias("jaccard"))
    )
    near = scored.where(F.col("jaccard") >= c.threshold) if c.verify else scored
    exact_groups = earlier.groupBy("exact").agg(F.min("dup_group").alias("dup_group"))
    exact = reps.select(ident.alias("v"), F.col(EXACT).alias("exact")).join(exact_groups, "exact")
    edges = near.select("dup_group", "v").unionByName(exact.select("dup_group", "v"))
    return edges.select(F.concat(F.lit(PRIOR), F.col("dup_group")).alias("u"), "v").distinct()


EARLIER = "_dd_earlier"  # assign_with_earlier: the row joined a group of an earlier batch


def assign_with_earlier(signed: DataFrame, labels: DataFrame, earlier: DataFrame, c: DedupConf) -> DataFrame:
    """``assign_groups`` where some components hold an earlier group (label ``PRIOR`` + its id):
    their new rows take that group and its representative (``dup_kind`` and ``jaccard`` against
    it) and ``EARLIER`` true; the rest are grouped among themselves by the rule."""
    prior = F.col("label").startswith(PRIOR)
    joined = signed.join(
        labels.where(prior).select(F.col("node").alias(EXACT_REP), F.substring("label", 2, 1 << 30).alias("_dd_prior")),
        EXACT_REP,
        "left",
    )
    fresh = assign_groups(joined.where(F.col("_dd_prior").isNull()).drop("_dd_prior"), labels.where(~prior), c)
    reps = earlier.where(F.col("doc_id") == F.col("representative")).select(
        F.col("dup_group").alias("_dd_prior"),
        F.col("representative").alias("dup_of"),
        F.col("exact").alias("_dd_rep_exact"),
        F.col("shingles").alias("_dd_rep_shingles"),
    )
    exact = F.col(EXACT) == F.col("_dd_rep_exact")
    copies = joined.join(reps, "_dd_prior").select(
        *signed.columns,
        F.col("_dd_prior").alias("dup_group"),
        "dup_of",
        F.lit(False).alias("is_representative"),
        F.when(exact, F.lit("exact")).otherwise(F.lit("near")).alias("dup_kind"),
        F.when(exact, F.lit(1.0)).otherwise(jaccard(F.col(SHINGLES), F.col("_dd_rep_shingles"))).alias("jaccard"),
        F.lit(True).alias(EARLIER),
    )
    return fresh.withColumn(EARLIER, F.lit(False)).unionByName(copies)


@dataclass
class Marked:
    """``mark_duplicates``' result: ``rows`` are the input's with the signature columns, the
    exact representative (``EXACT_REP``) and the ``assign_groups`` columns."""

    rows: DataFrame
    candidate_pairs: int
    verified_pairs: int
    component_rounds: int
    earlier_copies: int = 0  # rows that joined a group of an earlier batch


def mark_duplicates(
    good: DataFrame, c: DedupConf, banding: minhash.Banding, earlier: DataFrame | None = None
) -> Marked:
    """Steps 1-6 on ``good`` (unique, non-null ids; text to compare), and, given ``earlier``
    (``index_rows`` of earlier batches), against those too. The intermediate tables are
    checkpointed, so each is computed once; only counts reach the driver."""
    signed = exact_representatives(with_signatures(good, c, banding), c).localCheckpoint()
    reps = signed.where(F.col(c.id_column) == F.col(EXACT_REP))
    candidates = candidate_pairs(reps, c).localCheckpoint()
    n_candidates = candidates.count()
    edges = verified_pairs(candidates, reps, c).select("u", "v")
    if earlier is not None:
        cross = earlier_candidates(reps, earlier, c).localCheckpoint()
        n_candidates += cross.count()
        edges = edges.select(F.col("u").cast("string"), F.col("v").cast("string")).unionByName(
            earlier_edges(cross, reps, earlier, c)
        )
    edges = edges.localCheckpoint()
    n_verified = edges.count()
    console.status(logger, "dedup: %d candidate pairs, %d verified", n_candidates, n_verified)
    if n_verified <= c.local_max_edges:
        labels, rounds = in_one_task(edges), 0
    else:
        labels, rounds = component_labels(edges, c.max_rounds)
    if earlier is None:
        return Marked(assign_groups(signed, labels, c), n_candidates, n_verified, rounds)
    marked = assign_with_earlier(signed, labels.localCheckpoint(), earlier, c).localCheckpoint()
    copies = marked.where(F.col(EARLIER)).count()
    return Marked(marked.drop(EARLIER), n_candidates, n_verified, rounds, copies)
