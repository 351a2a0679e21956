"""Generated corpora with planted faults, and what ``prepare`` must make of them.

A ``Corpus`` is files in one input format (CSV with or without a header, single-line or
multi-line; JSON Lines; text lines; text files; Parquet written by pyarrow; gzip'd variants),
several per corpus, in nested folders, with empty files and symbolic links. Each record is
good or carries one planted fault, and the corpus knows the outcome the README promises:

- every good record is published once, its text identical to the generated one (cleaning is
  off; the documented reading rules: a BOM at the start of a file is dropped, a line ends at
  ``\\n`` or ``\\r\\n``, a line break inside a quoted CSV field is ``\\n``);
- every planted bad record is quarantined with its reason;
- a doc_id seen twice among good records is published once, the others are
  ``duplicate_doc_id``;
- a symbolic link (to a file or a folder, inside or outside the input) is never read.

Used by ``tests/test_fuzz_prepare.py`` (a bounded, seeded profile in CI) and
``tests/benchmarks/fuzz_prepare.py`` (the long profile, ``make fuzz``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

# Every class of invalid UTF-8 (the issue 25 list), each surrounded by ASCII in the record.
BAD_UTF8 = {
    "overlong_2": b"\xc0\xaf",
    "overlong_3": b"\xe0\x80\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above_max": b"\xf4\x90\x80\x80",
    "truncated": b"\xe2\x82",
    "stray_continuation": b"\x80",
    "invalid_lead": b"\xff",
}
_PLACEHOLDER = "\ue000"  # stands for the bad bytes until the record is encoded
BLANKS = [" ", "\t", "\u00a0", "\u2003", "\u3000", "\u2028", " \u00a0 "]

FORMATS = ["csv", "csv_headerless", "csv_multiline", "jsonl", "text_lines", "text_files", "parquet"]
LINE_FORMATS = {"csv", "csv_headerless", "csv_multiline", "jsonl", "text_lines"}

# Characters texts are made of: ASCII with the CSV metacharacters, accents, CJK, emoji, tab,
# NUL and a lone \r (both are text). No U+FFFD (prepare reads it as a decoding error) and no
# U+FEFF (a BOM).
_ALPHABET = st.sampled_from(
    list("abcdefghij KLMNOP 0123456789 ,;\"'.-") + ["é", "ß", "中", "文", "😀", "\t", "\x00", "\r"]
)


@dataclass
class Record:
    key: str  # unique token, in the id (or the text where there is no id)
    doc_id: str | None  # the id column's value (None: content hash)
    text: str
    title: str | None
    fault: str | None = None  # None = good; else the planted fault's name
    reason: str | None = None  # the quarantine reason the fault must get
    bad_bytes: bytes | None = None
    bad_field: str | None = None  # where the bad bytes go: "text" or another column


@dataclass
class CorpusFile:
    relpath: str
    records: list[Record]
    gz: bool = False
    bom: bool = False
    crlf: bool = False
    header_order: list[str] | None = None  # CSV with a header: the column order of this file


@dataclass
class Corpus:
    fmt: str
    files: list[CorpusFile]
    links: list[tuple[str, str, bool]] = field(
        default_factory=list
    )  # (link relpath, target, is_dir); target "outside/..." or relpath
    empty_files: list[str] = field(default_factory=list)
    raises: str | None = None  # the run must fail with exit 2 and a line matching this

    # ------------------------------------------------------------------ configuration

    @property
    def prepare_format(self) -> str:
        return "csv" if self.fmt.startswith("csv") else self.fmt

    def prepare_conf(self) -> dict:
        conf: dict = {"format": self.prepare_format}
        if self.prepare_format == "csv":
            conf["csv"] = {"header": self.fmt != "csv_headerless", "multiline": self.fmt == "csv_multiline"}
            if self.fmt == "csv_headerless":
                conf["csv"]["columns"] = ["id", "title", "text"]
        if self.fmt in ("csv", "csv_headerless", "csv_multiline", "jsonl", "parquet"):
            conf["columns"] = {"doc_id": "id", "title": "title", "text": "text"}
        if self.fmt == "text_files":
            conf["text_files"] = {"glob": "*.txt"}
        return conf

    # ------------------------------------------------------------------ what must come out

    def all_records(self) -> list[Record]:
        return [r for f in self.files for r in f.records]

    def doc_id(self, r: Record) -> str:
        if r.doc_id is not None:
            return r.doc_id
        return hashlib.sha256(f"{r.title or ''}\x1f{r.text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def expected_text(self, r: Record) -> str:
        return r.text.replace("\r\n", "\n") if self.fmt == "csv_multiline" else r.text

    def good_records(self) -> list[Record]:
        return [r for r in self.all_records() if r.fault is None]

    def duplicate_groups(self) -> dict[str, list[Record]]:
        groups: dict[str, list[Record]] = {}
        for r in self.good_records():
            groups.setdefault(self.doc_id(r), []).append(r)
        return groups

    # ------------------------------------------------------------------ writing

    def write(self, root: Path) -> Path:
        """Write the corpus under ``root/input`` (links may point to ``root/outside``); returns the input."""
        top = root / "input"
        top.mkdir(parents=True)
        outside = root / "outside"
        outside.mkdir()
        for f in self.files:
            path = top / f.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            data = self._file_bytes(f)
            if f.gz:
                data = gzip.compress(data, mtime=0)
            path.write_bytes(data)
        for rel in self.empty_files:
            (top / rel).parent.mkdir(parents=True, exist_ok=True)
            (top / rel).write_bytes(b"")
        for rel, target, is_dir in self.links:
            link = top / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if target.startswith("outside/"):
                real = root / target
                if is_dir:
                    real.mkdir(parents=True, exist_ok=True)
                    (real / ("leak" + self._ext())).write_bytes(self._file_bytes(CorpusFile("leak", [self._leak()])))
                else:
                    real.write_bytes(self._file_bytes(CorpusFile("leak", [self._leak()])))
            else:
                real = top / target
            link.symlink_to(real, target_is_directory=is_dir)
        return top

    def _ext(self) -> str:
        return {"jsonl": ".jsonl", "text_lines": ".txt", "text_files": ".txt", "parquet": ".parquet"}.get(
            self.fmt, ".csv"
        )

    def _leak(self) -> Record:
        return Record("LEAK", "LEAK", "text behind a symbolic link", "leak")

    def _file_bytes(self, f: CorpusFile) -> bytes:
        if self.fmt == "parquet":
            return _parquet_bytes(f.records)
        if self.fmt == "text_files":
            r = f.records[0]
            return _with_bad_bytes(r.text, r) if r.bad_bytes else r.text.encode("utf-8")
        newline = "\r\n" if f.crlf else "\n"
        lines: list[bytes] = []
        if self.fmt in ("csv", "csv_multiline"):
            lines.append(_csv_line(f.header_order or ["id", "title", "text"], newline))
        for r in f.records:
            lines.append(self._record_bytes(r, f, newline))
        data = b"".join(lines)
        return (b"\xef\xbb\xbf" + data) if f.bom else data

    def _record_bytes(self, r: Record, f: CorpusFile, newline: str) -> bytes:
        if self.fmt == "jsonl":
            if r.fault == "broken_json":
                return (json.dumps({"id": r.doc_id, "text": r.text})[:-1] + newline).encode()
            line = json.dumps({"id": r.doc_id, "title": r.title, "text": r.text}, ensure_ascii=False) + newline
            return _with_bad_bytes(line, r) if r.bad_bytes else line.encode("utf-8")
        if self.fmt == "text_lines":
            line = r.text + newline
            return _with_bad_bytes(line, r) if r.bad_bytes else line.encode("utf-8")
        values = {"id": r.doc_id, "title": r.title, "text": r.text}
        order = f.header_order or ["id", "title", "text"]
        if r.fault == "wrong_field_count":
            line = _csv_line([*order, "extra"], newline, values={**values, "extra": "one field too many"})
        elif r.fault == "unclosed_quote":
            # An opening quote that is never closed, in front of the text field (on one line).
            opened = '"' + "".join(ch for ch in values["text"] if ch not in '"\r\n')
            line = (",".join(opened if c == "text" else _cell(values[c]) for c in order) + newline).encode()
        else:
            line = _csv_line(order, newline, values=values)
        return _with_bad_bytes(line.decode("utf-8"), r) if r.bad_bytes else line


def _cell(value: str | None) -> str:
    """One value as Python's csv writer writes it (quoted only where it must be)."""
    cells = io.StringIO()
    csv.writer(cells, lineterminator="").writerow([value or "", ""])
    return cells.getvalue()[:-1]


def _csv_line(order: list[str], newline: str, values: dict | None = None) -> bytes:
    cells = io.StringIO()
    csv.writer(cells, lineterminator=newline).writerow([(values or {c: c for c in order}).get(c) or "" for c in order])
    return cells.getvalue().encode("utf-8")


def _with_bad_bytes(text: str, r: Record) -> bytes:
    return text.encode("utf-8").replace(_PLACEHOLDER.encode("utf-8"), r.bad_bytes)


def _parquet_bytes(records: list[Record]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(values: list[str | None]) -> pa.Array:
        return pa.array([None if v is None else v.encode("utf-8", "surrogatepass") for v in values], pa.binary()).view(
            pa.string()
        )

    texts = [_with_bad_bytes(r.text, r).decode("utf-8", "surrogateescape") if r.bad_bytes else r.text for r in records]
    table = pa.table(
        {
            "id": column([r.doc_id for r in records]),
            "title": column([r.title for r in records]),
            "text": pa.array([t.encode("utf-8", "surrogateescape") for t in texts], pa.binary()).view(pa.string()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


# ---------------------------------------------------------------------------- strategies

_FAULTS = {
    "csv": ["bad_utf8_text", "bad_utf8_other", "blank_text", "unclosed_quote", "wrong_field_count"],
    "csv_headerless": ["bad_utf8_text", "bad_utf8_other", "blank_text", "unclosed_quote", "wrong_field_count"],
    "csv_multiline": ["bad_utf8_text", "bad_utf8_other", "blank_text", "unclosed_quote", "wrong_field_count"],
    "jsonl": ["bad_utf8_text", "bad_utf8_other", "blank_text", "broken_json"],
    "text_lines": ["bad_utf8_text", "blank_text"],
    "text_files": ["blank_text"],
    "parquet": ["bad_utf8_text", "blank_text"],
}
_REASON = {
    "bad_utf8_text": "undecodable_bytes",
    "bad_utf8_other": "undecodable_bytes",
    "blank_text": "empty_text",
    "unclosed_quote": "malformed_record",
    "wrong_field_count": "malformed_record",
    "broken_json": "malformed_record",
}


@st.composite
def texts(draw, multiline: bool, one_line: bool) -> str:
    text = draw(st.text(_ALPHABET, min_size=1, max_size=40))
    if multiline and draw(st.booleans()):
        text += draw(st.sampled_from(["\n", "\r\n"])) + draw(st.text(_ALPHABET, min_size=1, max_size=20))
    text = text.strip(" \t\r\n\x00\u00a0") or "x"  # never blank by accident; never ends in \r (a line ending)
    if one_line:
        text = text.replace("\r", " ")  # text_files: a file is a document; kept simple
    return "w" + text  # a visible first character: never whitespace-only


@st.composite
def records(draw, fmt: str, start: int, count: int) -> list[Record]:
    out = []
    has_id = fmt not in ("text_lines", "text_files")
    for i in range(start, start + count):
        key = f"k{i:04d}"
        text = draw(texts(multiline=fmt == "csv_multiline", one_line=fmt == "text_files"))
        if not has_id:
            text = f"{key} {text}"
        r = Record(key, key if has_id else None, text, f"title {key}" if has_id else None)
        fault = draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from(_FAULTS[fmt])))
        if fault:
            r.fault, r.reason = fault, _REASON[fault]
            if fault.startswith("bad_utf8"):
                r.bad_bytes = BAD_UTF8[draw(st.sampled_from(sorted(BAD_UTF8)))]
                if fault == "bad_utf8_text" or not has_id:
                    head = len(key) + 1 if not has_id else 1  # keep the key whole
                    r.text = f"{r.text[:head]} {_PLACEHOLDER} {r.text[head:]}"
                else:
                    r.title = f"title {key} {_PLACEHOLDER} x"
            elif fault == "blank_text":
                r.text = draw(st.sampled_from(BLANKS))  # without an id column it is found by its reason alone
        out.append(r)
    return out


@st.composite
def corpora(draw, formats: list[str] | None = None) -> Corpus:
    fmt = draw(st.sampled_from(formats or FORMATS))
    n_files = draw(st.integers(1, 4)) if fmt != "text_files" else draw(st.integers(2, 8))
    files: list[CorpusFile] = []
    next_key = 0
    for i in range(n_files):
        folder = draw(st.sampled_from(["", "a/", "a/b/", "c/"]))
        count = 1 if fmt == "text_files" else draw(st.integers(1, 12))
        recs = draw(records(fmt, next_key, count))
        next_key += count
        ext = {"jsonl": ".jsonl", "text_lines": ".txt", "text_files": ".txt", "parquet": ".parquet"}.get(fmt, ".csv")
        gz = fmt in LINE_FORMATS and draw(st.booleans())
        f = CorpusFile(
            f"{folder}f{i}{ext}{'.gz' if gz else ''}",
            recs,
            gz=gz,
            bom=fmt in LINE_FORMATS and draw(st.booleans()),
            crlf=fmt in LINE_FORMATS and draw(st.booleans()),
        )
        if fmt in ("csv", "csv_multiline") and draw(st.booleans()):
            f.header_order = draw(st.permutations(["id", "title", "text"]))
        files.append(f)
    good = [r for f in files for r in f.records if r.fault is None]
    if good and fmt not in ("text_lines", "text_files") and draw(st.booleans()):
        # The same id again, in this file or another: one of them is published.
        original = draw(st.sampled_from(good))
        copy = Record(f"dup{original.key}", original.doc_id, original.text + " again", original.title)
        draw(st.sampled_from(files)).records.append(copy)
    corpus = Corpus(fmt, files)
    if draw(st.booleans()):
        corpus.empty_files.append(
            f"empty{'.txt' if fmt.startswith('text') else '.csv' if fmt.startswith('csv') else '.' + fmt}"
        )
    for kind in draw(
        st.lists(st.sampled_from(["file_outside", "dir_outside", "file_inside", "dir_inside"]), max_size=2, unique=True)
    ):
        if kind == "file_outside":
            corpus.links.append((f"link_out{corpus._ext()}", f"outside/target{corpus._ext()}", False))
        elif kind == "dir_outside":
            corpus.links.append(("link_out_dir", "outside/folder", True))
        elif kind == "file_inside":
            corpus.links.append((f"z/link_in{corpus._ext()}", files[0].relpath, False))
        elif any("/" in f.relpath for f in files):
            corpus.links.append(
                ("z/link_in_dir", next(f.relpath for f in files if "/" in f.relpath).split("/")[0], True)
            )
    return corpus


# ---------------------------------------------------------------------------- the invariants


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of everything under ``root`` except ``skip`` (links not followed)."""
    seen = {}
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not any(_under(here / d, s) for s in skip)]
        for name in names + dirs:
            path = here / name
            if any(_under(path, s) for s in skip):
                continue
            st_ = path.lstat()
            seen[str(path)] = (
                st_.st_size if not path.is_dir() or path.is_symlink() else 0,
                st_.st_mtime_ns if not path.is_dir() else 0,
            )
    return seen


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def check_outcome(corpus: Corpus, metrics: dict, out_rows: list[dict], bad_rows: list[dict]) -> None:
    """Assert every invariant of the module docstring on one run's outputs."""
    records = corpus.all_records()
    empty_documents = len(corpus.empty_files) if corpus.fmt == "text_files" else 0  # an empty file is an empty document
    assert metrics["rows_in"] == metrics["rows_out"] + metrics["rows_quarantined"]
    assert metrics["rows_in"] == len(records) + empty_documents, (metrics["rows_in"], len(records), empty_documents)
    assert len(out_rows) == metrics["rows_out"] and len(bad_rows) == metrics["rows_quarantined"]
    assert metrics["skipped_links"] == len(corpus.links)

    published: dict[str, str] = {}
    for row in out_rows:
        assert row["doc_id"] not in published, f"doc_id {row['doc_id']} published twice"
        published[row["doc_id"]] = row["text"]
    assert not any("LEAK" in (t or "") or d == "LEAK" for d, t in published.items()), "a symbolic link was followed"

    groups = corpus.duplicate_groups()
    assert set(published) == set(groups), (sorted(set(published) ^ set(groups)))[:5]
    for doc_id, group in groups.items():
        assert published[doc_id] in [corpus.expected_text(r) for r in group], (doc_id, published[doc_id], group)

    bad_reasons: dict[str, int] = {}
    for row in bad_rows:
        bad_reasons[row["reason"]] = bad_reasons.get(row["reason"], 0) + 1
        assert row["detail"], row
    planted: dict[str, int] = {}
    for r in records:
        if r.reason:
            planted[r.reason] = planted.get(r.reason, 0) + 1
    if empty_documents:
        planted["empty_text"] = planted.get("empty_text", 0) + empty_documents
    duplicates = sum(len(g) - 1 for g in groups.values())
    if duplicates:
        planted["duplicate_doc_id"] = duplicates
    assert bad_reasons == planted, (bad_reasons, planted)

    # Each planted bad record is quarantined with its own reason: found by its key in the raw record.
    for r in records:
        if r.reason and r.reason != "empty_text" or (r.reason == "empty_text" and r.doc_id):
            hits = [b for b in bad_rows if r.key in (b["raw"] or "") or b["doc_id"] == r.key]
            assert any(b["reason"] == r.reason for b in hits), (r, hits)
        if r.bad_bytes is not None:
            hit = next(b for b in bad_rows if r.key in (b["raw"] or "") and b["reason"] == "undecodable_bytes")
            assert hit["raw_bytes"] is not None and r.bad_bytes in hit["raw_bytes"]
