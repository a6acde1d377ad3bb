"""The one atomic writer every output of the package goes through."""

import json
import os
import stat

import numpy as np
import pytest

from mtcnn.atomic import atomic_path, temporary_name, write_json_atomic, write_text_atomic
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
