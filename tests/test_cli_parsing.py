"""The command line's parsing: overrides that end where positional arguments begin, and
mistyped names answered with the closest valid ones."""

from __future__ import annotations

import pytest

from mtcnn.cli import build_parser


def test_set_overrides_stop_before_a_positional_argument():
    args = build_parser().parse_args(["train", "--set", "epochs=1", "optim.lr=0.01", "pnet"])
    assert args.stage == "pnet" and args.overrides == ["epochs=1", "optim.lr=0.01"]
    args = build_parser().parse_args(["train", "pnet", "--set", "epochs=1", "--set", "batch_size=full"])
    assert args.overrides == ["epochs=1", "batch_size=full"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["detcet", "a.jpg"], "invalid choice: 'detcet'"),
        (["detect", "a.jpg", "--min-face-szie", "30"], "did you mean --min-face-size?"),
        (["eval", "wider", "--save-predicitons", "p"], "did you mean --save-predictions"),
    ],
)
def test_a_mistyped_name_gets_the_closest_valid_one(argv, expected, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected in error
    if argv[0] == "detcet":
        assert error.endswith("did you mean detect?")
    else:  # named by the command it was given to, not the top level
        assert error.startswith(f"mtcnn {' '.join(argv[:2] if argv[0] == 'eval' else argv[:1])}: error:")
