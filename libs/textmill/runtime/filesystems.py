"""Files the driver reaches from Python: local disks and mounts, and what pyarrow's ``fs`` opens.

``storage`` (locks, markers, atomic publish) and the readers' listings go through one small
interface, ``Files``, so that they work whether or not the driver holds a JVM:

- ``LocalFiles``: paths without a scheme and ``file:`` URIs (local disks, NFS or FUSE mounts,
  Databricks volumes under ``/Volumes/...``), on every kind of session. Exclusive creates
  (the output lock) are ``O_EXCL``; renames are POSIX renames, atomic per directory.
- ``ArrowFiles``: any other scheme that pyarrow opens from the driver (``s3://``, ``gs://``,
  ``abfs://``, ``hdfs://`` with libhdfs), used on Spark Connect sessions. Object stores have
  no atomic rename and no exclusive create, so a publish there is a copy and the lock is
  check-then-write (the same as Hadoop's S3A gives a classic session).
- On a classic session, other schemes keep Hadoop's FileSystem, which serves what Spark is
  configured for (``hdfs://``, ``s3a://`` with the cluster's credentials); that class lives
  in ``textmill.runtime.session_kinds``, the one module that touches the JVM.

Every method takes a path or URI as the user wrote it and returns qualified URIs.

**Paths and URIs, one rule.** A textmill URI is literal: ``file:`` + the absolute path as the file
system spells it (``file:/data/in%20put/f.csv`` is the folder ``in%20put``, never ``in put``), or a
scheme and authority + the literal path. Spark takes such strings literally too (Hadoop's ``Path``),
and so does ``local_path``. What Spark hands back as a URI (``_metadata.file_path``,
``DataFrame.inputFiles()``) is percent-encoded (``in%2520put``): it enters textmill through
``from_spark_uri`` (``io.spark_uri_column`` in SQL), nowhere else. (Until 2026-12-07 the CSV
reader percent-decoded textmill's literal URIs: with folders ``in%20put`` and ``in put`` side by
side it read the second and labelled the rows with the first.)
"""

from __future__ import annotations

import errno
import glob as globbing
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol
from urllib.parse import urlparse

from textmill.runtime.errors import OutputError

GLOB_CHARS = frozenset("*?[{")


@dataclass(frozen=True)
class Entry:
    uri: str  # qualified, no trailing slash
    name: str
    is_dir: bool
    size: int


class Files(Protocol):
    def qualify(self, path: str) -> str: ...
    def info(self, path: str) -> Entry | None: ...
    def glob(self, pattern: str) -> list[Entry]: ...
    def children(self, path: str) -> list[Entry]: ...
    def files_under(self, path: str) -> Iterator[Entry]: ...
    def mkdirs(self, path: str) -> None: ...
    def delete(self, path: str) -> None: ...
    def rename(self, source: str, target: str) -> None: ...
    def replace_file(self, source: str, target: str) -> None: ...
    def read_text(self, path: str) -> str | None: ...
    def write_text(self, path: str, text: str, exclusive: bool = False) -> bool: ...


def scheme(path: str) -> str:
    """The URI scheme of ``path`` ('' for a plain path; one letter is a Windows drive, not a scheme)."""
    found = urlparse(path).scheme
    return "" if len(found) <= 1 else found.lower()


def is_local(path: str) -> bool:
    return scheme(path) in ("", "file")


def local_path(uri: str) -> str:
    """The local path of a ``file:`` URI (``file:/x``, ``file:///x``); other strings unchanged."""
    if not uri.startswith("file:"):
        return uri
    rest = uri[len("file:") :]
    return "/" + rest.lstrip("/") if rest.startswith("//") else rest


def from_spark_uri(uri: str) -> str:
    """textmill's literal form (see the module docstring) of a percent-encoded URI Spark handed back."""
    from urllib.parse import unquote

    if uri.startswith("file:"):
        return "file:" + unquote(local_path(uri))
    head, sep, rest = uri.partition("://")
    if not sep:
        return unquote(uri)
    authority, slash, path = rest.partition("/")
    return f"{head}://{authority}{slash}{unquote(path)}"


def expand_braces(pattern: str) -> list[str]:
    """``a{b,c}d`` -> ``abd``, ``acd`` (Hadoop's glob syntax; Python's glob has no braces)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return list(itertools.chain.from_iterable(expand_braces(f"{head}{alt}{tail}") for alt in match.group(1).split(",")))


def hidden(name: str) -> bool:
    return name.startswith(("_", "."))


class LocalFiles:
    """Paths on this machine's file system (see the module docstring)."""

    def _path(self, path: str) -> str:
        return os.path.abspath(local_path(path))

    def qualify(self, path: str) -> str:
        return f"file:{self._path(path)}"

    def _entry(self, local: str) -> Entry:
        is_dir = os.path.isdir(local)
        return Entry(f"file:{local}", os.path.basename(local) or "/", is_dir, 0 if is_dir else os.path.getsize(local))

    def info(self, path: str) -> Entry | None:
        local = self._path(path)
        return self._entry(local) if os.path.exists(local) else None

    def glob(self, pattern: str) -> list[Entry]:
        found = set()
        for one in expand_braces(self._path(pattern)):
            found.update(
                globbing.glob(one, include_hidden=True)
                if GLOB_CHARS & set(one)
                else ([one] if os.path.lexists(one) else [])
            )
        return [self._entry(p) for p in sorted(found) if os.path.exists(p) or os.path.islink(p)]

    def children(self, path: str) -> list[Entry]:
        local = self._path(path)
        return [self._entry(os.path.join(local, n)) for n in sorted(os.listdir(local))] if os.path.isdir(local) else []

    def files_under(self, path: str) -> Iterator[Entry]:
        for folder, dirs, names in os.walk(self._path(path), followlinks=False):
            dirs[:] = sorted(d for d in dirs if not hidden(d))
            for name in sorted(n for n in names if not hidden(n)):
                if os.path.isfile(os.path.join(folder, name)):
                    yield self._entry(os.path.join(folder, name))

    def mkdirs(self, path: str) -> None:
        os.makedirs(self._path(path), exist_ok=True)

    def delete(self, path: str) -> None:
        import shutil

        local = self._path(path)
        if os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local)
        elif os.path.lexists(local):
            os.remove(local)

    def rename(self, source: str, target: str) -> None:
        # os.rename would replace an empty directory: the target must not exist at all (the lock is held).
        destination = self._path(target)
        if os.path.lexists(destination):
            raise FileExistsError(errno.EEXIST, "the target exists", target)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.rename(self._path(source), destination)

    def replace_file(self, source: str, target: str) -> None:
        os.replace(self._path(source), self._path(target))

    def read_text(self, path: str) -> str | None:
        try:
            with open(self._path(path), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str, exclusive: bool = False) -> bool:
        local = self._path(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        try:
            fd = os.open(local, os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else os.O_TRUNC), 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True


class ArrowFiles:
    """A remote file system that pyarrow opens from the driver (see the module docstring)."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self._pafs = pafs
        self._scheme = scheme(uri)
        try:
            self._fs, _ = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
            raise OutputError(
                f"{uri}: the driver cannot open {self._scheme}:// paths from Python "
                f"({str(exc).splitlines()[0][:200]}); "
                "on a Spark Connect session use a path the driver reaches (a local disk or mount, "
                "/Volumes/...) or a scheme pyarrow opens (s3://, gs://, abfs://, hdfs:// with libhdfs)"
            ) from exc

    def _path(self, path: str) -> str:
        return self._pafs.FileSystem.from_uri(path)[1].rstrip("/") if scheme(path) else path.rstrip("/")

    def _uri(self, path: str) -> str:
        return (
            f"{self._scheme}://{path.lstrip('/')}"
            if self._scheme not in ("hdfs", "viewfs")
            else f"{self._scheme}://{path}"
        )

    def qualify(self, path: str) -> str:
        return self._uri(self._path(path))

    def _entry(self, info) -> Entry:
        is_dir = info.type == self._pafs.FileType.Directory
        return Entry(self._uri(info.path.rstrip("/")), info.base_name, is_dir, 0 if is_dir else (info.size or 0))

    def info(self, path: str) -> Entry | None:
        info = self._fs.get_file_info(self._path(path))
        return None if info.type == self._pafs.FileType.NotFound else self._entry(info)

    def glob(self, pattern: str) -> list[Entry]:
        found: dict[str, Entry] = {}
        for one in expand_braces(self._path(pattern)):
            parts = one.split("/")
            fixed = next((i for i, part in enumerate(parts) if GLOB_CHARS & set(part)), None)
            if fixed is None:
                entry = self.info(one)
                if entry is not None:
                    found[entry.uri] = entry
                continue
            base = "/".join(parts[:fixed])
            selector = self._pafs.FileSelector(base, recursive=len(parts) - fixed > 1, allow_not_found=True)
            for info in self._fs.get_file_info(selector):
                rel = info.path.rstrip("/")[len(base.rstrip("/")) + 1 :].split("/")
                if len(rel) == len(parts) - fixed and all(fnmatchcase(r, p) for r, p in zip(rel, parts[fixed:])):
                    entry = self._entry(info)
                    found[entry.uri] = entry
        return [found[k] for k in sorted(found)]

    def children(self, path: str) -> list[Entry]:
        selector = self._pafs.FileSelector(self._path(path), recursive=False, allow_not_found=True)
        return sorted((self._entry(i) for i in self._fs.get_file_info(selector)), key=lambda e: e.name)

    def files_under(self, path: str) -> Iterator[Entry]:
        base = self._path(path)
        selector = self._pafs.FileSelector(base, recursive=True, allow_not_found=True)
        for info in sorted(self._fs.get_file_info(selector), key=lambda i: i.path):
            rel = info.path[len(base) + 1 :].split("/")
            if info.type == self._pafs.FileType.File and not any(hidden(part) for part in rel):
                yield self._entry(info)

    def mkdirs(self, path: str) -> None:
        self._fs.create_dir(self._path(path), recursive=True)

    def delete(self, path: str) -> None:
        entry = self.info(path)
        if entry is not None and entry.is_dir:
            self._fs.delete_dir(self._path(path))
        elif entry is not None:
            self._fs.delete_file(self._path(path))

    def rename(self, source: str, target: str) -> None:
        if self.info(target) is not None:
            raise FileExistsError(errno.EEXIST, "the target exists", target)
        self._fs.move(self._path(source), self._path(target))

    def replace_file(self, source: str, target: str) -> None:
        self.delete(target)
        self._fs.move(self._path(source), self._path(target))

    def read_text(self, path: str) -> str | None:
        if self.info(path) is None:
            return None
        with self._fs.open_input_stream(self._path(path)) as f:
            return f.read().decode("utf-8")

    def write_text(self, path: str, text: str, exclusive: bool = False) -> bool:
        if exclusive and self.info(path) is not None:
            return False
        with self._fs.open_output_stream(self._path(path)) as f:
            f.write(text.encode("utf-8"))
        return True
