"""File-system errors in user terms, and the checks around run/output directories.

* :class:`OutputWriteError` (an ``OSError``, errno kept): a checkpoint or output that could not be
  written, naming the path and what went wrong ("disk full", "read-only file system", ...). Nothing
  already in place is lost: writes go to a temporary name first and the temporary is removed.
* :func:`describe_os_error`: ``ENOSPC`` → "disk full (No space left on device)", ``EROFS`` →
  "read-only file system", ``EACCES``/``EPERM`` → "permission denied", ``EDQUOT`` → "disk quota
  exceeded"; else the system's message.
* :func:`check_writable_dir`: create a directory and write + remove a probe file in it, so that a run
  fails before hours of work rather than when it writes its results (this works as root too, where
  permission bits do not stop writes but a read-only mount does).
* :func:`remove_stale_temporaries`: drop ``<name>.tmp-<pid>`` (checkpoint directories) and
  ``.<name>.<pid>.tmp`` (atomic file writes) left in a directory by a process that was killed mid-write
  (any pid other than a live local process).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

_WHAT = {
    errno.ENOSPC: "disk full",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.ENOTDIR: "a path component is a file, not a directory",
}
_STALE = re.compile(r"^(?:.+\.tmp-(\d+)|\..+\.(\d+)\.tmp)$")


class OutputWriteError(OSError):
    """A file or checkpoint that could not be written; ``str()`` names the path and the cause."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


class DuplicateKeyError(ValueError):
    """A JSON object that names one key twice (``json.load`` would silently keep the last value)."""


def unique_keys(pairs):
    """``object_pairs_hook`` for ``json.load``: a dict, or :class:`DuplicateKeyError` naming the repeated key
    (two entries for one video or boundary id: the first would be dropped without a word)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(f"key {k!r} appears twice in one JSON object (the second would silently replace "
                                    "the first)")
        out[k] = v
    return out


class JSONFileError(ValueError):
    """A JSON input file that cannot be read as one: malformed, a key repeated, not UTF-8."""


def read_json_file(path: os.PathLike | str, what: str):
    """``json.load`` of ``path`` with repeated keys refused (:func:`unique_keys`); :class:`JSONFileError`
    naming ``what`` (e.g. "annotation"), the file and the place otherwise. Torch-free (score mode)."""
    import json

    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise JSONFileError(f"malformed JSON in {what} file {path}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except DuplicateKeyError as e:
        raise JSONFileError(f"{what} file {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{what} file {path} is not UTF-8 text: {e}") from None


def describe_os_error(e: BaseException) -> str:
    """``e`` in user terms: "disk full (No space left on device)", "read-only file system (...)", ..."""
    code = getattr(e, "errno", None)
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    what = _WHAT.get(code) if code is not None else None
    return f"{what} ({text})" if what else text


def os_error_in(e: BaseException) -> Optional[OSError]:
    """The ``OSError`` behind ``e`` (itself, or its cause/context chain), if any. torch.save to a file
    object reports a failed write as ``RuntimeError: [enforce fail at inline_container.cc...]`` with the
    OSError as its context."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_error(path: os.PathLike | str, e: BaseException, what: str = "write", hint: str = "") -> OutputWriteError:
    """An :class:`OutputWriteError` for a failed write of ``path`` caused by ``e``."""
    os_err = os_error_in(e)
    cause = describe_os_error(os_err) if os_err is not None else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    code = os_err.errno if os_err is not None and os_err.errno is not None else errno.EIO
    return OutputWriteError(code, f"cannot {what} {path}: {cause}{hint}")


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` through ``.<name>.<pid>.tmp`` + ``os.replace`` (fsynced). On failure the
    temporary is removed, ``path`` keeps its old content, and :class:`OutputWriteError` names it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise write_error(path, e) from e
    return path


def check_writable_dir(path: os.PathLike | str, what: str = "output directory") -> Path:
    """Create ``path`` (parents too) and prove it writable with a probe file; raise
    :class:`OutputWriteError` naming it otherwise."""
    path = Path(path)
    probe = path / f".write_probe.{os.getpid()}.tmp"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputWriteError(e.errno or errno.EIO,
                               f"{what} {path} is not writable: {describe_os_error(e)}") from e
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: os.PathLike | str) -> List[Path]:
    """Remove temporaries of interrupted writes in ``directory`` (see module doc); returns them."""
    directory = Path(directory)
    removed: List[Path] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _STALE.match(p.name)
        if not m or _alive(int(m.group(1) or m.group(2))):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError as e:
            log.warning("cannot remove %s left by an interrupted write: %s", p, describe_os_error(e))
            continue
        removed.append(p)
    if removed:
        log.warning("removed %d temporaries left by an interrupted write: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed


__all__ = ["OutputWriteError", "DuplicateKeyError", "unique_keys", "JSONFileError", "read_json_file", "describe_os_error", "os_error_in", "write_error", "atomic_write_bytes", "check_writable_dir",
           "remove_stale_temporaries"]
