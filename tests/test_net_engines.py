"""experiments/net_engines.py: every engine runs the shipped nets and gives PyTorch float32's face
probabilities (bfloat16 within its rounding); an engine that cannot run becomes an "n/a" cell."""

import pytest
from scripts_dir import load_script

from mtcnn.model.weights import load_net, resolve_weight_files
from mtcnn.spec import STAGE_NAMES, STAGES

net_engines = load_script("net_engines")

SHAPES = {"pnet": (1, 3, 40, 52), "rnet": (4, 3, 24, 24), "onet": (3, 3, 48, 48)}
EXACT = 1e-4  # float32 throughout, only the order of the sums differs: as tests/test_export.py allows
# bfloat16 keeps 8 significant bits, so every weight and activation is rounded by up to 2**-9 (0.2%)
# of itself; after the 4 to 6 layers of a net the logits move by a few hundredths at most, and the
# face probability by at most a quarter of the change of the logit difference (p (1 - p) <= 1/4).
# Measured: 0.002 at these shapes; at the cascade's, 0.0015 / 0.0008 / 0.01 on the script's random
# pixels and up to 0.03 on other inputs. 0.02 leaves ten times the room here and still fails a net
# that is wrong, not merely rounded.
BFLOAT16 = 0.02


@pytest.fixture(scope="module")
def nets():
    files = resolve_weight_files(None)
    return {stage: load_net(files[stage], stage) for stage in STAGES}


@pytest.fixture(scope="module")
def results(nets, tmp_path_factory):
    # one thread: the figures do not matter here, and a busy machine slows OpenMP's barriers down
    return net_engines.measure_engines(nets, SHAPES, repeats=1, workdir=tmp_path_factory.mktemp("onnx"), threads=1)


@pytest.mark.parametrize("engine", ["ONNX Runtime", "OpenCV DNN"])
def test_onnx_engines_give_pytorch_probabilities(engine, results):
    pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install '.[onnx]')")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install '.[onnx]')")
    if engine == "ONNX Runtime":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install '.[onnx]')")
    for stage in STAGES:
        cell = results[stage][engine]
        assert cell.failure is None, f"{stage}: {cell.failure}"
        assert cell.milliseconds > 0
        assert cell.max_difference <= EXACT, stage


def test_bfloat16_is_rounded_float32(results):
    for stage in STAGES:
        cell = results[stage]["torch bfloat16"]
        assert cell.failure is None, f"{stage}: {cell.failure}"
        # above zero: the net really ran in bfloat16
        assert 0 < cell.max_difference <= BFLOAT16, stage


def test_table_has_one_row_per_net(results):
    rows = net_engines.format_table(results, SHAPES).splitlines()[2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [STAGE_NAMES[stage] for stage in STAGES]
    assert all(row.count("|") == 10 for row in rows)  # net, input, 4 engines' ms, 3 differences


def test_an_engine_that_cannot_run_is_a_cell(nets, tmp_path):
    def missing(net, pixels, onnx_file, threads):
        raise ImportError("no module named 'engine'")

    engines = {"torch float32": net_engines.torch_float32, "missing": missing}
    results = net_engines.measure_engines(nets, {"rnet": SHAPES["rnet"]}, 1, tmp_path, engines, threads=1)
    assert results["rnet"]["missing"].failure == "ImportError: no module named 'engine'"
    assert results["rnet"]["torch float32"].max_difference == 0
    assert "| n/a (ImportError: no module named 'engine') | - |" in net_engines.format_table(results, SHAPES)
