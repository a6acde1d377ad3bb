"""Atomic file output: everything the package writes goes to a temporary file beside the target,
which is flushed to disk and then renamed onto the target.

A kill or an error mid-write therefore leaves the previous file (or none), never a truncated one,
and the temporary is removed when the writer raises. Files get the permissions of any new file
(``0o666`` less the umask), so weights and reports written for others can be read by them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other writer uses, ending in ``path``'s suffix
    (``out/a.png`` -> ``out/.a.<32 hex>.tmp.png``) for writers that choose the format from it."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; when the block ends it is synced and
    renamed onto ``path``. If the block raises, the temporary is deleted and ``path`` is untouched.

    The parent folder is created. The unique temporary name means two processes writing the same
    target never write into each other's temporary; the last rename wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        # Writers such as OpenCV or torch.onnx close the file themselves: sync it here, so a power
        # loss after the rename cannot leave an empty file under the final name.
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, document: Any) -> None:
    """Write ``document`` as indented JSON (one trailing newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(document, indent=1) + "\n")
