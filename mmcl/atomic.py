"""Atomic file writes, one-line errors when the storage refuses one, and fault injection.

Run records, caches, prepared data, tables and figures are written to a temporary
``.<name>.<random>.tmp`` beside their file and renamed into place (:func:`atomic_write`), so no
reader ever sees a half-written file under a final name. A write the storage refuses raises
:class:`DiskWriteError`, one line naming the file; the temporary is deleted. :mod:`mmcl.records`
uses these for run folders and checkpoints; the module imports no torch, so :mod:`mmcl.results`,
:mod:`mmcl.plots` and :mod:`mmcl.claims` (which regenerate tables from records without it) write
through it too.

Reading a record back (:func:`read_json_record`): a file under its final name is complete unless
something other than these writes cut it short or overwrote it (a copy or a sync interrupted, a
disk fault, a process killed while writing it in place). Such a file is named in one warning line
and read as absent, so a run whose ``metrics.json`` is damaged counts as incomplete (left out of
tables and ``mmcl verify``) and is run again, resuming from its checkpoints, instead of stopping
every command that reads it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

FAULT_VARIABLE = "MMCL_FAULT"
log = logging.getLogger(__name__)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# A fault point: (point name, task index or None), see fault_point.
Fault = tuple[str, int | None]


def fault_point(name: str, task: int | None = None) -> None:
    """Kill this process with SIGKILL here when ``$MMCL_FAULT`` names this point (fault injection).

    ``MMCL_FAULT=<point>`` matches every call of that point, ``MMCL_FAULT=<point>:<task>`` only
    the call for task index ``<task>``. The points (called by :mod:`mmcl.engine`):

    - ``train``: half-way through the optimizer steps of a task;
    - ``checkpoint-write``: a task's checkpoint is in its temporary file, not yet renamed;
    - ``tasks-write``: ``tasks.jsonl`` with a task's row is in its temporary file, not yet renamed;
    - ``metrics-write``: ``metrics.json`` is in its temporary file, not yet renamed (no task index:
      use ``MMCL_FAULT=metrics-write``).

    SIGKILL cannot be caught: no ``finally``, no ``atexit`` runs, as when the out-of-memory
    killer or a scheduler's hard time limit ends a job. Running the same command again (without
    the variable) must then resume to the numbers of an uninterrupted run. Writes that fail as
    on a full disk (``MMCL_FAULT=enospc:<n>``): see :func:`disk_fault`.
    """
    wanted = os.environ.get(FAULT_VARIABLE, "").strip()
    if not wanted:
        return
    point, _, index = wanted.partition(":")
    if point == name and (not index or (task is not None and index == str(task))):
        os.kill(os.getpid(), signal.SIGKILL)


class DiskWriteError(OSError):
    """The storage refused to write a file: full, over quota, read-only, not permitted, ...

    ``errno`` is the operating system's (``errno.ENOSPC``, ``errno.EROFS``, ...), ``filename``
    the file that was being written (not its temporary), and the text one line, ``<reason>
    writing <file>``: the command line prints it as it is, with no traceback.
    """

    def __str__(self) -> str:
        return f"{self.strerror} writing {self.filename}"


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Raise an ``OSError`` of the block as :class:`DiskWriteError` naming ``path``.

    For code that writes ``path`` (or a folder for it): the operating system names the file or
    folder it refused, often a temporary or a parent folder the user never asked for, and its
    ``OSError`` surfaces as a traceback; this one names the file the user would look for.
    """
    try:
        yield
    except DiskWriteError:
        raise
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise DiskWriteError(error.errno, reason[:1].lower() + reason[1:], str(path)) from error


DISK_FAULTS = {"enospc": errno.ENOSPC, "edquot": errno.EDQUOT, "erofs": errno.EROFS, "eacces": errno.EACCES}
_atomic_writes = 0  # atomic writes this process has made so far, for MMCL_FAULT=enospc:<n>


def disk_fault() -> None:
    """Fail this atomic write as full or read-only storage would, when ``$MMCL_FAULT`` asks for it.

    Called once by every atomic write, after its temporary is written and before the rename:
    ``MMCL_FAULT=enospc:<n>`` raises ``OSError(ENOSPC)`` at the n-th atomic write of this process
    (1: the first), ``MMCL_FAULT=enospc`` at every one, as a full disk would; ``edquot``, ``erofs``
    and ``eacces`` raise the errors of a quota, a read-only file system and a folder without write
    permission. ``mmcl run`` whose caches exist writes ``config.yaml``, ``order.json``,
    ``manifest.json`` and ``zero_shot.json``, then each task's checkpoint and ``tasks.jsonl``, and
    ``metrics.json`` last. Running the same command again without the variable must then resume
    to the numbers of an uninterrupted run.
    """
    global _atomic_writes
    _atomic_writes += 1
    kind, _, index = os.environ.get(FAULT_VARIABLE, "").strip().partition(":")
    if kind in DISK_FAULTS and (not index or index == str(_atomic_writes)):
        raise OSError(DISK_FAULTS[kind], os.strerror(DISK_FAULTS[kind]))


def atomic_write(path: str | Path, write: Callable[[str], None], fault: Fault | None = None) -> None:
    """Write ``path`` by calling ``write(temporary)`` on a temporary file beside it, then renaming it.

    Nothing but a complete file ever carries the name ``path``. On any error (and on
    KeyboardInterrupt) the temporary is deleted; an ``OSError`` is raised as
    :class:`DiskWriteError` naming ``path``. ``fault``: see :func:`fault_point`.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            write(temporary)
            disk_fault()
            # mkstemp creates 0600 files; records are shared with collaborators like any other file.
            os.chmod(temporary, 0o666 & ~_umask())
            if fault:
                fault_point(*fault)
            os.replace(temporary, path)
        except BaseException:
            # A file system that turned read-only on an error (ext4's errors=remount-ro) keeps the
            # temporary (a resumed run deletes those of its folder); the error to report is the write's.
            with suppress(OSError):
                Path(temporary).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes, fault: Fault | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (``fault``: see :func:`fault_point`)."""
    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())

    atomic_write(path, write, fault)


def atomic_write_text(path: Path, text: str, fault: Fault | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename (``fault``: see :func:`fault_point`)."""
    atomic_write_bytes(path, text.encode("utf-8"), fault)


def atomic_write_json(path: Path, data: Any, fault: Fault | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", fault)


# What a damaged run record means for its run, in the one line that names it (see read_json_record).
RUN_INCOMPLETE = ("the run counts as incomplete (left out of tables and mmcl verify); mmcl run or the notebook's "
                  "sweep runs it again, resuming from its checkpoints")
_named_damaged: set[tuple] = set()  # (path, size, mtime) of damaged records already named by this process


def read_json_record(path: str | Path, consequence: str, kind: type = dict) -> Any | None:
    """The JSON value (of type ``kind``) that an atomic write put at ``path``; None when there is no
    such file, or when it is damaged: not valid JSON (cut short, overwritten, empty) or not a ``kind``.

    A damaged file is named in one warning line ending in ``consequence`` (what the caller does
    instead, e.g. :data:`RUN_INCOMPLETE`), once per process and version of the file: the callers
    read it as absent, and the next write of the record replaces it.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes())
        if isinstance(value, kind):
            return value
        problem = f"a JSON {type(value).__name__}, not {'an object' if kind is dict else kind.__name__}"
    except (FileNotFoundError, NotADirectoryError):  # no such file (a file in the way of its folder too)
        return None
    except json.JSONDecodeError as error:
        problem = "empty" if not error.doc.strip() else \
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}, cut short or overwritten"
    except UnicodeDecodeError:
        problem = "not text: overwritten"
    except OSError as error:
        problem = f"unreadable: {error.strerror or error}"
    try:
        stat = path.stat()
        version = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = (str(path), None, None)
    if version not in _named_damaged:
        _named_damaged.add(version)
        log.warning("%s is damaged (%s); %s", path, problem, consequence)
    return None
