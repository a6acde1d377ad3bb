"""The one atomic writer every output of the package goes through."""

import errno
import json
import os
import stat

import numpy as np
import pytest
from full_disk import fill_disk, leftovers

from mtcnn.atomic import (
    OutputError,
    atomic_path,
    check_output_file,
    check_output_folder,
    os_error_message,
    remove_stale_temporaries,
    temporary_name,
    write_json_atomic,
    write_text_atomic,
)
from mtcnn.ops.draw import write_image


def test_json_and_text_land_whole_with_new_file_permissions(tmp_path):
    path = tmp_path / "deep" / "report.json"  # parents are created
    previous_umask = os.umask(0o022)
    try:
        write_json_atomic(path, {"ap": [0.8, 0.7]})
        write_text_atomic(tmp_path / "note.txt", "héllo\n")
    finally:
        os.umask(previous_umask)
    assert json.loads(path.read_text()) == {"ap": [0.8, 0.7]}
    assert path.read_text().endswith("]\n}\n")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    for written in (path, tmp_path / "note.txt"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "note.txt", "report.json"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"run": 1})
    with pytest.raises(ValueError, match="half written"), atomic_path(path) as tmp:
        tmp.write_text('{"run": 2, "trunc')
        raise ValueError("half written")
    assert json.loads(path.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    # a writer that fails before creating its temporary is no different
    with pytest.raises(TypeError):
        write_json_atomic(path, {"run": object()})
    assert json.loads(path.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_temporaries_are_hidden_unique_and_keep_the_suffix(tmp_path):
    first, second = temporary_name(tmp_path / "grid.png"), temporary_name(tmp_path / "grid.png")
    assert first != second  # two writers of one target never share a temporary
    for name in (first, second):
        assert name.parent == tmp_path and name.name.startswith(".grid.") and name.suffix == ".png"
    # OpenCV picks the format from the suffix: the image written through the temporary is a PNG
    image = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    write_image(tmp_path / "grid.png", image)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"run": 1})
    fill_disk(monkeypatch)
    with pytest.raises(OutputError) as raised:
        write_json_atomic(path, {"run": 2, "pad": "x" * 100_000})
    assert str(raised.value) == f"{path}: cannot write (no space left on device)"
    image = np.zeros((20, 30, 3), np.uint8)
    for name in ("drawn.png", "deep/drawn.jpg"):
        with pytest.raises(OutputError, match=f"{name}: cannot write \\(no space left on device\\)$"):
            write_image(tmp_path / name, image)
    assert json.loads(path.read_text()) == {"run": 1}
    assert leftovers(tmp_path) == [] and not (tmp_path / "drawn.png").exists()


def test_a_folder_or_a_file_in_the_way_is_refused_in_one_line(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "note.txt").write_text("a file")
    with pytest.raises(OutputError, match=r"out: is a folder; give a file name to write$"):
        write_json_atomic(tmp_path / "out", {})
    with pytest.raises(OutputError, match=r"note.txt/a.json: cannot write \(.*note.txt is a file, not a folder\)$"):
        write_json_atomic(tmp_path / "note.txt" / "a.json", {})
    with pytest.raises(OutputError, match=r"grid.xyz: cannot write an image of type .xyz$"):
        write_image(tmp_path / "grid.xyz", np.zeros((4, 4, 3), np.uint8))
    # The same, told before any work by the commands' checks.
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path / "out")
    with pytest.raises(OutputError, match=f"{tmp_path / 'note.txt'} is a file, not a folder"):
        check_output_file(tmp_path / "note.txt" / "deeper" / "a.json")
    with pytest.raises(OutputError, match="note.txt: is a file; give a folder"):
        check_output_folder(tmp_path / "note.txt")
    check_output_file(tmp_path / "new" / "deeper" / "a.json")  # parents that do not exist yet are fine
    check_output_folder(tmp_path / "out" / "drawn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt", "out"]
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(OutputError, match="no permission to create files in"):
            check_output_file(locked / "a.json")
    error = PermissionError(errno.EACCES, "Permission denied", "/x/y.json")
    assert os_error_message(error) == "/x/y.json: permission denied"
    assert os_error_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == "no space left on device"


def test_stale_temporaries_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    stale = [tmp_path / f".last.{'a' * 32}.tmp.pt", tmp_path / f".config.{'0' * 32}.tmp.yaml"]
    kept = [tmp_path / "last.pt", tmp_path / ".hidden", tmp_path / f".last.{'a' * 31}.tmp.pt", tmp_path / "a.tmp.pt"]
    for path in stale + kept:
        path.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / stale[0].name).write_bytes(b"x")  # only the folder named, not below it
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)
    assert (tmp_path / "sub" / stale[0].name).exists()
    assert remove_stale_temporaries(tmp_path / "nowhere") == []
