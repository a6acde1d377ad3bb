"""Keep large freed blocks inside the process on glibc, so CPU work does not fault in fresh pages.

Why: glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at start, raised as
blocks are freed, never past 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` on
``free``; it also gives the heap top back to the kernel once twice that threshold lies free there.
PyTorch on the CPU allocates through ``malloc`` with no cache of its own, so every training step
of O-Net at batch 384 maps, zeroes and unmaps its activations (about 100 MB each) again: on a
2-core machine over 40% of the CPU time went to page faults (``mtcnn bench train``: 435 samples/s
against 1,145 with the blocks kept). Raising both thresholds keeps freed blocks in the heap,
where the next step reuses them. The cost is memory: the process keeps its peak heap instead of
returning it between steps.

The console commands call :func:`retain_freed_memory` once at start, and :class:`mtcnn.MTCNN` calls
:func:`retain_freed_memory_once` when it is built for the CPU, so that detection from Python is as
fast with no call to remember; Python code that trains on the CPU can call it too. Settings of the
user's own (the ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``
environment variables) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Environment variables by which a user sets glibc's malloc; when one is set, theirs wins.
USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

#: Blocks up to 1 GiB come from the heap and stay there when freed (``mallopt`` takes an int).
DEFAULT_THRESHOLD_BYTES = 1 << 30


def retain_freed_memory(threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap and trim thresholds to ``threshold_bytes`` for this process.

    Returns True when both were set; False, changing nothing, off Linux, without glibc, or when
    the environment already carries the user's own malloc settings. Forked child processes
    inherit the setting.
    """
    if not 0 < threshold_bytes < 2**31:
        raise ValueError(f"threshold_bytes must be in (0, 2**31), got {threshold_bytes}")
    if not sys.platform.startswith("linux"):
        return False
    user_settings = [name for name in USER_MALLOC_SETTINGS if name in os.environ]
    if user_settings:
        log.debug("malloc thresholds left as %s sets them", ", ".join(user_settings))
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    applied = bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, threshold_bytes))
    log.debug("malloc mmap and trim thresholds %s %d bytes", "set to" if applied else "not set to", threshold_bytes)
    return applied


_first_result: bool | None = None


def retain_freed_memory_once() -> bool:
    """:func:`retain_freed_memory` with its default threshold, the first time it is called in this
    process; later calls change nothing and return the first call's result, so that thresholds a
    program sets with ``mallopt`` after building a detector stay as it set them."""
    global _first_result
    if _first_result is None:
        _first_result = retain_freed_memory()
    return _first_result


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` as a ctypes function, or None where the C library is not glibc."""
    try:
        # The symbols already loaded into this process, libc's among them: find_library("c") would
        # run ldconfig or a compiler in a subprocess on every command's start.
        libc = ctypes.CDLL(None)
        # gnu_get_libc_version exists only in glibc: musl also has a mallopt, which does nothing.
        _ = libc.gnu_get_libc_version
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def available_memory_bytes() -> int | None:
    """Memory this process can still take: the kernel's ``MemAvailable``, or less when a cgroup
    (v2, as containers set) limits the process; None where neither can be read (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as limit_file, open("/sys/fs/cgroup/memory.current") as used_file:
            limit = limit_file.read().strip()
            if limit != "max":
                available = min(available, int(limit) - int(used_file.read()))
    except (OSError, ValueError):
        pass  # no cgroup v2 memory controller here: the kernel's figure stands
    return available
