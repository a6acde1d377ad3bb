"""glibc malloc thresholds: large blocks come from the heap and stay there once the call is made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtcnn import allocator, cli

needs_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or allocator._glibc_mallopt() is None,
    reason="the malloc thresholds are glibc's (Linux)",
)

# Allocates 256 MiB through malloc, as torch does on the CPU, and reports whether the block lies in
# the brk heap (kept there when freed) or in a mapping of its own (unmapped on free).
PROBE = """
import ctypes, importlib.util, sys

# The module alone, by its path: importing the package would load torch into every probe.
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
applied = allocator.retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def heap_range():
    with open("/proc/self/maps") as maps:
        line = next(line for line in maps if line.rstrip().endswith("[heap]"))
    return [int(bound, 16) for bound in line.split()[0].split("-")]

size = 256 << 20
address = libc.malloc(size)
start, end = heap_range()
in_heap = start <= address and address + size <= end
libc.free(address)
kept = heap_range()[1] >= address + size
print(applied, in_heap, kept)
"""


# The same malloc probe after building a detector for the CPU, with no call of the user's;
# ``applied`` is the detector's call's result, which retain_freed_memory_once returns from then on.
DETECTOR_PROBE = """
import ctypes, sys
import mtcnn.allocator as allocator
from mtcnn import MTCNN

MTCNN(device="cpu")
applied = allocator.retain_freed_memory_once()
""" + PROBE[PROBE.index("libc = ctypes") :]


def _probe(mode: str, script: str = PROBE, **env: str) -> list[str]:
    environment = {key: value for key, value in os.environ.items() if key not in allocator.USER_MALLOC_SETTINGS}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", script, mode, allocator.__file__],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    return result.stdout.split()


@needs_glibc
def test_large_blocks_come_from_the_heap_and_stay_after_free():
    assert _probe("retain") == ["True", "True", "True"]


@needs_glibc
def test_without_the_call_a_large_block_is_mapped_on_its_own():
    # The probe can tell the two apart: glibc's default serves 256 MiB with mmap.
    assert _probe("plain")[1] == "False"


@needs_glibc
def test_the_users_own_malloc_settings_win():
    applied, in_heap, _ = _probe("retain", MALLOC_MMAP_THRESHOLD_="131072")
    assert (applied, in_heap) == ("False", "False")


@needs_glibc
def test_a_detector_on_the_cpu_sets_the_thresholds_itself():
    # The probe imports the package from this checkout.
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    assert _probe("detector", DETECTOR_PROBE, PYTHONPATH=path) == ["True", "True", "True"]
    applied, in_heap, _ = _probe("detector", DETECTOR_PROBE, PYTHONPATH=path, MALLOC_MMAP_THRESHOLD_="131072")
    assert (applied, in_heap) == ("False", "False")


def test_threshold_outside_mallopts_int_range_is_refused():
    with pytest.raises(ValueError, match="threshold_bytes"):
        allocator.retain_freed_memory(2**31)
    with pytest.raises(ValueError, match="threshold_bytes"):
        allocator.retain_freed_memory(0)


def test_console_commands_set_the_thresholds(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True))
    assert cli.main(["prep", "inspect", str(tmp_path / "missing"), "--out", str(tmp_path / "grid.png")]) == 2
    assert calls == [True]
