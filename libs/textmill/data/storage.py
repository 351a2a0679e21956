"""Where outputs live: refusing unsafe output paths, locking them, and publishing atomically.

Every textmill output directory carries ``_textmill.json`` (the ownership marker: schema,
rows, the run that published it). Rules, enforced here for every job:

- an output may not contain, or sit inside, one of the job's inputs;
- an existing file, or a non-empty directory without the marker, is never replaced unless
  the user sets ``io.replace_unmarked: true``;
- one writer at a time: ``<output>.__textmill_lock`` names the writer (host, pid, start);
  a second writer fails at once with that name; a lock left by a killed process on this
  host is taken over; leftovers of killed runs (``__textmill_tmp-*``, ``__textmill_old-*``,
  ``__textmill_build-*``) are cleaned up, and a previous output left aside is restored;
- outputs written together (``prepare``'s output and quarantine) are published as one
  unit: each marker names the publish and its siblings, and ``check_published_together``
  tells readers when a killed publish left siblings from different runs;
- the final rename cannot nest a directory inside an existing one.

All functions run on the driver and reach files through ``textmill.runtime.filesystems`` (local paths and
mounts from Python on every session; other schemes as ``session_kinds.files_for`` says).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from textmill.runtime.errors import OutputError
from textmill.runtime.filesystems import GLOB_CHARS, Files, is_local, local_path
from textmill.runtime.redact import redact_tree
from textmill.runtime.session_kinds import files_for

logger = logging.getLogger(__name__)

MARKER = "_textmill.json"
LOCK_SUFFIX = ".__textmill_lock"
TMP_TAG, OLD_TAG, BUILD_TAG = "__textmill_tmp-", "__textmill_old-", "__textmill_build-"
OUTPUT_GLOB_CHARS = frozenset("*?[]{}")
REPLACE_HINT = "choose another io.output, or set io.replace_unmarked: true to replace it anyway"


# ---------------------------------------------------------------------------- paths


def files(spark: SparkSession, path: str) -> Files:
    """The ``Files`` that reaches ``path`` from this driver (``session_kinds.files_for``)."""
    return files_for(spark, path)


def qualified(spark: SparkSession, path: str) -> str:
    """The fully qualified URI of ``path`` (``file:/abs/path``, ``hdfs://nn/path``), no trailing slash."""
    return files(spark, path).qualify(path)


def for_spark(spark: SparkSession, path: str) -> str:
    """``path`` as Spark's readers and writers should get it: a local relative path made absolute
    here, since under Spark Connect the server resolves it against its own working directory."""
    return os.path.abspath(local_path(path)) if is_local(path) and not path.startswith("file:") else path


def path_exists(spark: SparkSession, path: str) -> bool:
    return len(files(spark, path).glob(path)) > 0


def is_directory(spark: SparkSession, path: str) -> bool:
    entry = files(spark, path).info(path)
    return entry is not None and entry.is_dir


def delete_path(spark: SparkSession, path: str) -> None:
    files(spark, path).delete(path)


def _inside(parent: str, child: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _real(uri: str) -> str:
    """A local URI with every symbolic link resolved (``file:/real/path``); others unchanged."""
    return f"file:{os.path.realpath(local_path(uri))}" if uri.startswith("file:") else uri


def _input_locations(spark: SparkSession, path: str) -> list[str]:
    """What an input path names, links resolved: every match of a glob and the folder the glob
    searches (where a lock or staging file beside the output would be matched), or the path itself."""
    found = [_real(entry.uri) for entry in files(spark, path).glob(path)]
    parts = path.rstrip("/").split("/")
    fixed = next((i for i, part in enumerate(parts) if GLOB_CHARS & set(part)), None)
    if fixed is not None:
        found.append(_real(qualified(spark, "/".join(parts[:fixed]) or "/")))
    return found or [_real(qualified(spark, path))]


# ---------------------------------------------------------------------------- markers


def read_text(spark: SparkSession, path: str) -> str | None:
    """A small file's text, or None when it does not exist."""
    return files(spark, path).read_text(path)


def _write_text(spark: SparkSession, path: str, text: str, exclusive: bool = False) -> bool:
    """Write a small file; with ``exclusive``, only if it does not exist yet (returns False then)."""
    return files(spark, path).write_text(path, text, exclusive)


def write_marker(spark: SparkSession, directory: str, content: dict) -> None:
    """Write ``_textmill.json`` (schema version, row count...) into an output directory.

    Spark readers skip files starting with '_', so the marker never pollutes the data.
    Values that look like credentials (a password in a URI) are redacted.
    """
    _write_text(spark, f"{directory.rstrip('/')}/{MARKER}", json.dumps(redact_tree(content), indent=2, sort_keys=True))


def read_marker(spark: SparkSession, directory: str) -> dict | None:
    text = read_text(spark, f"{directory.rstrip('/')}/{MARKER}")
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputError(f"{directory}: {MARKER} is damaged ({exc}); rerun the job that writes it") from exc


def publish_ids(spark: SparkSession, outputs: list[str]) -> dict[str, str | None]:
    """{output: the publish id in its marker, None when there is none}: a changed id means a publish."""
    ids = {}
    for output in outputs:
        try:
            marker = read_marker(spark, output) if path_exists(spark, output) else None
        except OutputError:
            marker = None
        ids[output] = (marker or {}).get("publish_id")
    return ids


def _check_parent_is_a_folder(fs: Files, output: str, key: str) -> None:
    """Refuse an output below an existing file (``out.txt/results``): writing it failed after the work
    with a FileExistsError traceback. The nearest existing ancestor must be a folder."""
    path = fs.qualify(output).rstrip("/")
    while "/" in path.split("://", 1)[-1].lstrip("/"):
        path = path.rsplit("/", 1)[0]
        parent = fs.info(path or "/")
        if parent is None:
            continue
        if not parent.is_dir:
            raise OutputError(
                f"{key} {output!r} would be inside {parent.uri}, which is a file, not a folder; choose another path"
            )
        return


def check_output(
    spark: SparkSession,
    output: str,
    inputs: Iterable[str],
    replace_unmarked: bool = False,
    key: str = "io.output",
    container_for: str | None = None,
) -> None:
    """Refuse ``output`` if it overlaps an input, holds a file or data textmill did not write, or
    sits where textmill cannot write.

    ``container_for`` names the job when ``output`` is a directory of several outputs: it must
    then be empty, or that job's container; a dataset output must not be someone's container.
    """
    _check_output_place(spark, output, inputs, replace_unmarked, key, container_for)
    if is_local(output):
        _check_writable(os.path.abspath(local_path(output)), key, output)


def _probe(folder: str) -> str | None:
    """Why no file can be made and removed in ``folder`` (None if one can). A real attempt: the
    permission bits say nothing for root, nor for an immutable folder or a read-only mount."""
    try:
        handle, name = tempfile.mkstemp(prefix=".textmill-probe-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _check_writable(path: str, key: str, given: str) -> None:
    """textmill writes its output's lock file and staging folder beside it, creates its missing
    folders, and deletes the old output's folders when it replaces it: each folder must take a new
    file. A read-only output or parent published, then failed with a PermissionError traceback and
    left ``__textmill_old-*`` beside the output (issue 39, item 3)."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    while not os.path.isdir(parent) and parent != "/":
        parent = os.path.dirname(parent)
    folders = [parent]
    if os.path.isdir(path) and not os.path.islink(path):
        folders += [root for root, _, _ in os.walk(path)]
    for folder in folders:
        why = _probe(folder)
        if why is not None:
            what = "its parent folder" if folder == parent else "the existing output"
            raise OutputError(
                f"{key} {given!r}: cannot write in {what} {folder} ({why}); textmill writes the output, its "
                "lock and its staging folder there, and deletes the old output it replaces: make it writable, "
                "or choose another path"
            )


def _check_output_place(
    spark: SparkSession,
    output: str,
    inputs: Iterable[str],
    replace_unmarked: bool,
    key: str,
    container_for: str | None,
) -> None:
    glob = sorted(set(output) & OUTPUT_GLOB_CHARS)
    if glob:
        # Spark reads an output back by its path, as a glob: such a name wrote, then failed with
        # PATH_NOT_FOUND after the work.
        raise OutputError(
            f"{key} {output!r} holds {' '.join(glob)}, which Spark reads as a glob pattern when it reads the "
            "output back; choose a path without * ? [ ] { }"
        )
    target = _real(qualified(spark, output))
    for given in inputs:
        for location in _input_locations(spark, given):
            if _inside(location, target) or _inside(target, location):
                relation = "is" if target == location else "contains" if _inside(target, location) else "is inside"
                raise OutputError(
                    f"{key} {output!r} {relation} the input {location} (symbolic links resolved): the "
                    "output is replaced whole, and its lock and staging files sit beside it, so the job "
                    "would delete or read its own files; write the output somewhere else"
                )
    fs = files(spark, output)
    entry = fs.info(output)
    if entry is None:
        _check_parent_is_a_folder(fs, output, key)
        return
    if not entry.is_dir:
        if replace_unmarked:
            logger.warning("%s %s is a file; replacing it (io.replace_unmarked is true)", key, output)
            return
        raise OutputError(
            f"{key} {output!r} is an existing file, and textmill replaces its output whole; {REPLACE_HINT}"
        )
    marker = read_marker(spark, output)
    if marker is not None:
        owner = marker.get("job") if marker.get("kind") == "container" else None
        if owner != container_for:
            held = f"the outputs of textmill's {owner} job" if owner else "a textmill dataset"
            raise OutputError(
                f"{key} {output!r} holds {held}; replacing it with "
                f"{'the outputs of ' + container_for if container_for else 'a dataset'} would mix or delete "
                "them; choose another path"
            )
        return
    contents = fs.children(output)
    if len(contents) == 0:
        return
    if replace_unmarked:
        logger.warning(
            "%s %s was not written by textmill (no %s); replacing it (io.replace_unmarked is true)", key, output, MARKER
        )
        return
    example = contents[0].name
    raise OutputError(
        f"{key} {output!r} is a directory that textmill did not write (no {MARKER}; it holds "
        f"{len(contents)} entr{'y' if len(contents) == 1 else 'ies'}, e.g. {example!r}) and would be "
        f"replaced whole; {REPLACE_HINT}"
    )


@contextmanager
def claimed_container(spark: SparkSession, directory: str, job: str) -> Iterator[None]:
    """Claim a directory a job writes several outputs into (checked with ``check_output`` first).

    The marker goes in first, so a run killed halfway leaves a directory the next run
    recognises as its own. A directory this claim created is removed again if the job fails
    before writing anything into it.
    """
    import textmill

    fs = files(spark, directory)
    created = fs.info(directory) is None
    fs.mkdirs(directory)
    if read_marker(spark, directory) is None:
        write_marker(spark, directory, {"kind": "container", "job": job, "textmill_version": textmill.__version__})
    try:
        yield
    except BaseException:
        if created and [e.name for e in fs.children(directory)] == [MARKER]:
            fs.delete(directory)
        raise


# ---------------------------------------------------------------------------- locks


_held: dict[str, tuple[int, int]] = {}  # lock path -> (thread id, depth) for this process
_held_guard = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(spark: SparkSession, lock: str) -> dict:
    try:
        return json.loads(read_text(spark, lock) or "{}")
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("lock %s is unreadable (%s)", lock, exc)
        return {}


def _acquire(spark: SparkSession, output: str, taken_over: list[dict]) -> str:
    """Take the lock on ``output``; a lock whose holder (on this host) no longer runs is taken over,
    and what it held (its MLflow run, when it had recorded one) is added to ``taken_over``."""
    lock = f"{output.rstrip('/')}{LOCK_SUFFIX}"
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "writer": uuid.uuid4().hex[:12],
    }
    for _ in range(2):
        if _write_text(spark, lock, json.dumps(me), exclusive=True):
            return lock
        holder = _read_lock(spark, lock)
        stale = (
            holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])
        )
        if not stale:
            who = f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('started', '?')}"
            raise OutputError(
                f"{output!r} is being written by another textmill run ({who}); wait for it to finish, "
                f"or, if no such run is alive, delete {lock}"
            )
        logger.warning(
            "taking over the lock on %s left by pid %s, which is no longer running", output, holder.get("pid")
        )
        taken_over.append({**holder, "output": output})
        delete_path(spark, lock)
    raise OutputError(f"could not lock {output!r}: {lock} keeps reappearing (another writer?)")


@contextmanager
def output_lock(spark: SparkSession, *outputs: str) -> Iterator[list[dict]]:
    """Hold the write lock on each output for the block (re-entrant in one thread). Yields the
    holders of the locks taken over from runs that died holding them (``record_run`` put their
    MLflow run in the lock), for ``tracking.end_dead_runs``."""
    taken: list[str] = []
    mine: list[str] = []
    taken_over: list[dict] = []
    try:
        for output in sorted(set(o.rstrip("/") for o in outputs)):
            lock = qualified(spark, f"{output}{LOCK_SUFFIX}")
            with _held_guard:
                holder = _held.get(lock)
                if holder is not None and holder[0] == threading.get_ident():
                    _held[lock] = (holder[0], holder[1] + 1)
                    taken.append(lock)
                    continue
                if holder is not None:
                    raise OutputError(
                        f"{output!r} is being written by another job in this process; run them one after the other"
                    )
            _acquire(spark, output, taken_over)
            with _held_guard:
                _held[lock] = (threading.get_ident(), 1)
            taken.append(lock)
            mine.append(output)
        for output in mine:
            _clean_leftovers(spark, output)
        yield taken_over
    finally:
        for lock in taken:
            with _held_guard:
                thread, depth = _held[lock]
                if depth > 1:
                    _held[lock] = (thread, depth - 1)
                    continue
                del _held[lock]
            delete_path(spark, lock)


def record_run(spark: SparkSession, outputs: list[str], run_id: str, tracking_uri: str) -> None:
    """Add the MLflow run that writes ``outputs`` to the locks this process holds on them, so that a
    run that takes a lock over from a killed one can end that run (``tracking_uri`` as shown:
    redacted, never a secret on disk)."""
    for output in sorted(set(o.rstrip("/") for o in outputs)):
        lock = f"{output}{LOCK_SUFFIX}"
        holder = _read_lock(spark, lock)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            _write_text(spark, lock, json.dumps({**holder, "run_id": run_id, "tracking_uri": tracking_uri}))


def _clean_leftovers(spark: SparkSession, output: str) -> None:
    """Remove what killed runs left beside ``output``; put a previous output left aside back first."""
    fs = files(spark, output)
    final = fs.qualify(output)
    parent, name = final.rsplit("/", 1)
    if not name or fs.info(parent or "/") is None:
        return
    tags = tuple(f"{name}.{tag}" for tag in (TMP_TAG, OLD_TAG, BUILD_TAG))
    leftovers = [e for e in fs.children(parent or "/") if e.name.startswith(tags)]
    if not leftovers:
        return
    aside = [e for e in leftovers if e.name.startswith(f"{name}.{OLD_TAG}")]
    if fs.info(final) is None and len(aside) == 1:
        # Killed after moving the previous output aside and before the new one was in place.
        fs.rename(aside[0].uri, final)
        logger.warning(
            "restored the previous output of %s from %s (a run was killed while publishing)", output, aside[0].name
        )
        leftovers.remove(aside[0])
    for entry in leftovers:
        logger.warning("removing %s, left by a run that did not finish", entry.uri)
        fs.delete(entry.uri)


# ---------------------------------------------------------------------------- publishing


def move(spark: SparkSession, source: str, target: str) -> None:
    """Rename ``source`` to ``target`` (which must not exist; never nested inside it), creating ``target``'s parent."""
    try:
        files(spark, target).rename(source, target)
    except OSError as exc:
        raise OutputError(f"could not move the new output into place at {target}: {exc}") from exc


def write_text_atomic(spark: SparkSession, path: str, text: str) -> None:
    """Write a small file so that readers see the old content or the new, never a part."""
    tmp = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp"
    _write_text(spark, tmp, text)
    files(spark, path).replace_file(tmp, path)


def _replaceable(spark: SparkSession, final: str, replace_unmarked: bool) -> None:
    fs = files(spark, final)
    entry = fs.info(final)
    if replace_unmarked or entry is None:
        return
    if not entry.is_dir or (read_marker(spark, final) is None and len(fs.children(final)) > 0):
        raise OutputError(f"{final!r} holds data textmill did not write (no {MARKER}); {REPLACE_HINT}")


def publish_all(
    spark: SparkSession, pairs: list[tuple[str, str]], replace_unmarked: bool = False, token: str | None = None
) -> None:
    """Move fully written staged directories to their finals, replacing what was there.

    Every old output is moved aside first, then every new one is renamed into place, then
    the old ones are deleted, so a failure leaves the old outputs or the new ones; a kill
    in between is repaired by the next run (``_clean_leftovers``) and detected by readers
    (``check_published_together``). Atomic per directory on HDFS and local disks; object
    stores have no atomic rename.
    """
    token = token or uuid.uuid4().hex[:8]
    for _, final in pairs:
        _replaceable(spark, final, replace_unmarked)
    moved: list[tuple[Files, str, str]] = []  # (files, final, backup)
    for _, final in pairs:
        fs = files(spark, final)
        if fs.info(final) is not None:
            backup = f"{final.rstrip('/')}.{OLD_TAG}{token}"
            try:
                fs.rename(final, backup)
            except (OSError, OutputError) as exc:
                _restore(moved)
                raise OutputError(f"could not move the previous output {final!r} aside ({exc})") from exc
            moved.append((fs, final, backup))
    placed: list[tuple[str, str]] = []
    try:
        for staged, final in pairs:
            move(spark, staged, final)
            placed.append((staged, final))
    except Exception:
        for staged, final in placed:  # put the new ones back where they came from, the old ones back in place
            files(spark, final).rename(final, staged)
        _restore(moved)
        raise
    for fs, _, backup in moved:
        fs.delete(backup)


def _restore(moved: list) -> None:
    for fs, final, backup in moved:
        fs.rename(backup, final)


def publish(spark: SparkSession, staged: str, final: str, replace_unmarked: bool = False) -> None:
    publish_all(spark, [(staged, final)], replace_unmarked)


@contextmanager
def staged_outputs(spark: SparkSession, *finals: str, replace_unmarked: bool = False) -> Iterator[list[str]]:
    """Yield temporary sibling paths for ``finals``; publish all of them as one unit only if the block succeeds.

    The finals are locked for the block. Each published directory gets a marker naming this
    publish and its siblings (a marker the block wrote is kept and extended).
    """
    import textmill

    token = uuid.uuid4().hex[:8]
    staged = [for_spark(spark, f"{f.rstrip('/')}.{TMP_TAG}{token}") for f in finals]
    with output_lock(spark, *finals):
        _warn_if_torn(spark, list(finals))
        try:
            yield staged
            for tmp, final in zip(staged, finals):
                marker = read_marker(spark, tmp) or {"textmill_version": textmill.__version__}
                marker.update({"publish_id": token, "published_with": [f for f in finals if f != final]})
                write_marker(spark, tmp, marker)
            publish_all(spark, list(zip(staged, finals)), replace_unmarked, token)
        finally:
            for tmp in staged:
                delete_path(spark, tmp)


def _torn(spark: SparkSession, path: str) -> list[str]:
    """Siblings of ``path`` that exist but were published by a different run."""
    marker = read_marker(spark, path) or {}
    torn = []
    for sibling in marker.get("published_with", []):
        other = read_marker(spark, sibling) if path_exists(spark, sibling) else None
        if other is not None and other.get("publish_id") != marker.get("publish_id"):
            torn.append(sibling)
    return torn


def _warn_if_torn(spark: SparkSession, finals: list[str]) -> None:
    for final in finals:
        torn = _torn(spark, final) if path_exists(spark, final) else []
        if torn:
            logger.warning(
                "%s and %s were published by different runs (a run was killed while publishing); "
                "this run replaces them together",
                final,
                ", ".join(torn),
            )
            return


def check_published_together(spark: SparkSession, path: str) -> None:
    """Fail if ``path`` and the outputs published with it come from different runs."""
    torn = _torn(spark, path)
    if torn:
        raise OutputError(
            f"{path} and {', '.join(torn)} were published by different runs (a run was killed while "
            "publishing them); rerun the job that writes them"
        )
