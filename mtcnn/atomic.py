"""Atomic file output: everything the package writes goes to a temporary file beside the target,
which is flushed to disk and then renamed onto the target.

A kill or an error mid-write therefore leaves the previous file (or none), never a truncated one,
and the temporary is removed when the writer raises; a kill leaves the temporary, which
:func:`remove_stale_temporaries` deletes where the next run starts. Files get the permissions of
any new file (``0o666`` less the umask), so weights and reports written for others can be read by
them. A write the system refuses (disk full, no permission, read-only disk, a folder in the way)
raises :class:`OutputError`, one line naming the file and the reason, instead of an ``OSError``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from mtcnn.errors import OutputError

#: Reasons worded for the user where the system's words are unclear; others use ``strerror``.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
}


def os_error_reason(exc: OSError) -> str:
    """The reason of an ``OSError`` in a few lower-case words (``"no space left on device"``)."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def os_error_message(exc: OSError) -> str:
    """An ``OSError`` as one line: ``<file>: <reason>`` (the file when it names one)."""
    return os_error_reason(exc) if exc.filename is None else f"{exc.filename}: {os_error_reason(exc)}"


@contextmanager
def reported_as_output_error(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into :class:`OutputError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({os_error_reason(exc)})") from exc


#: Names :func:`temporary_name` gives: hidden, 32 hex digits, ``.tmp`` and the target's suffix.
_TEMPORARY = re.compile(r"\..*\.[0-9a-f]{32}\.tmp(\.[^.]*)?")


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other writer uses, ending in ``path``'s suffix
    (``out/a.png`` -> ``out/.a.<32 hex>.tmp.png``) for writers that choose the format from it."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; when the block ends it is synced and
    renamed onto ``path``. If the block raises, the temporary is deleted and ``path`` is untouched.

    The parent folder is created. The unique temporary name means two processes writing the same
    target never write into each other's temporary; the last rename wins. An ``OSError`` of the
    block or of the rename becomes :class:`OutputError` naming ``path``, and a folder at ``path`` is
    refused before anything is written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name to write")
    _check_not_below_a_file(path.parent, path)
    with reported_as_output_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with reported_as_output_error(path):
            yield tmp
            # Writers such as OpenCV or torch.onnx close the file themselves: sync it here, so a
            # power loss after the rename cannot leave an empty file under the final name.
            descriptor = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):  # a failed clean-up must not hide why the write failed
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, document: Any) -> None:
    """Write ``document`` as indented JSON (one trailing newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(document, indent=1) + "\n")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left in ``folder`` (not below it) when a kill
    stopped a write (``.last.<32 hex>.tmp.pt``); returns what was removed.

    Call it where a run starts writing into a folder that no other process writes to (a training
    run's folder, a sample store), so that what the disk loses to killed writes comes back.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _TEMPORARY.fullmatch(entry.name) and not entry.is_dir():
            with suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _nearest_existing(path: Path) -> Path:
    """``path`` (made absolute) or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_not_below_a_file(path: Path, what: Path) -> Path:
    """Raise :class:`OutputError` about ``what`` when ``path``'s nearest existing ancestor (or
    itself) is not a folder, so that no folder can be made there; else return that ancestor."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise OutputError(f"{what}: cannot write ({existing} is a file, not a folder)")
    return existing


def _check_creatable_in(path: Path, what: Path) -> None:
    """Raise :class:`OutputError` about ``what`` unless ``path``'s nearest existing ancestor is a
    folder this process may create files in."""
    existing = _check_not_below_a_file(path, what)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: cannot write (no permission to create files in {existing})")


def check_output_file(path: str | Path) -> None:
    """Raise :class:`OutputError` now if a file cannot be written at ``path`` later: it is a
    folder, a file stands where a parent folder should be, or the folder to write in is not
    writable. Commands call it before long work, so that work is not lost to a bad output name."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name to write")
    _check_creatable_in(path.parent, path)


def check_output_folder(path: str | Path) -> None:
    """Raise :class:`OutputError` now if files cannot be written under the folder ``path`` later
    (it is a file, or it or its nearest existing parent is not writable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; give a folder to write into")
    _check_creatable_in(path, path)
