"""Options several commands share: the cascade's settings, config overrides, the device."""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from mtcnn.errors import MtcnnError

log = logging.getLogger("mtcnn")


class CommandParser(argparse.ArgumentParser):
    """``argparse`` as the commands use it: a mistyped option or command is named by the
    (sub)command it was given to, with the closest valid names; and ``--set KEY=VALUE ...``
    takes only ``KEY=VALUE`` words, so that a positional argument after it is not swallowed
    (``mtcnn train --set epochs=1 pnet``)."""

    def parse_known_args(self, args=None, namespace=None):
        args = _split_overrides(sys.argv[1:] if args is None else list(args))
        parsed, extras = super().parse_known_args(args, namespace)
        options = [word for word in extras if word.startswith("-")]
        if options and not self._subparsers:  # a leaf command: no subcommand can take them
            wanted = options[0].split("=", 1)[0]
            close = difflib.get_close_matches(wanted, list(self._option_string_actions), n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed, extras

    def error(self, message: str):
        found = re.match(r"argument .*: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]}?"
        super().error(message)


def _split_overrides(words: list[str]) -> list[str]:
    """``--set a=1 b=2`` as ``--set=a=1 --set=b=2``: argparse then ends the option at the first
    word without ``=``. A ``--set`` followed by no ``KEY=VALUE`` is left for argparse to report."""
    result: list[str] = []
    taken = None  # KEY=VALUE words read after the latest --set; None outside one
    for word in words:
        if taken is not None and "=" in word and not word.startswith("-"):
            result.append(f"--set={word}")
            taken += 1
            continue
        if taken == 0:
            result.append("--set")
        taken = 0 if word == "--set" else None
        if taken is None:
            result.append(word)
    if taken == 0:
        result.append("--set")
    return result


def add_detector_options(parser: argparse.ArgumentParser, weights_help: str | None = None) -> None:
    """The cascade options shared by every command that runs the detector."""
    group = parser.add_argument_group("detector")
    group.add_argument(
        "--weights",
        type=Path,
        default=None,
        help=weights_help
        or "folder with pnet.pt, rnet.pt, onet.pt (this project's "
        "checkpoints or the original MTCNN weights); default: the weights shipped with the package",
    )
    group.add_argument(
        "--min-face-size",
        type=float,
        default=20.0,
        metavar="N",
        help="smallest face side sought, in pixels (default 20)",
    )
    group.add_argument(
        "--scale-factor",
        type=float,
        default=0.709,
        metavar="F",
        help="ratio between image pyramid levels (default 0.709)",
    )
    group.add_argument(
        "--thresholds",
        type=float,
        nargs=3,
        default=(0.6, 0.7, 0.7),
        metavar=("P", "R", "O"),
        help="face probability thresholds of P-Net, R-Net, O-Net (default 0.6 0.7 0.7)",
    )
    add_onet_options(group)
    group.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto: CUDA if available)")
    group.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="images per batch (default 1 on the CPU, where it uses least memory, 16 on a GPU)",
    )


def add_onet_options(parser) -> None:
    """``--[no-]mirror-onet`` and ``--landmark-scales``: how :class:`~mtcnn.detect.cascade.MTCNN` runs O-Net."""
    parser.add_argument(
        "--mirror-onet",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average O-Net over each crop and its mirror image (default: on; --no-mirror-onet "
        "runs it once per crop, as the original cascade does)",
    )
    parser.add_argument(
        "--landmark-scales",
        type=scale_list,
        default=None,
        metavar="S,S,...|none",
        help="average each face's landmarks over O-Net runs on its window scaled by these "
        "comma-separated factors (default 0.8,0.9,1.1,1.2; none: one run, as the original "
        "cascade)",
    )


def scale_list(text: str) -> tuple[float, ...]:
    """``--landmark-scales`` values: ``0.8,0.9`` -> ``(0.8, 0.9)``; ``none`` -> ``()``. One word, so
    that the option cannot swallow the image paths after it."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or none, got {text!r}") from None


def landmark_scales_from_args(args: argparse.Namespace) -> tuple[float, ...]:
    """``--landmark-scales`` as given, or the detector's default when the option is absent."""
    if args.landmark_scales is None:
        from mtcnn.detect.cascade import LANDMARK_SCALES  # imported here: torch is slow to import for --help

        return LANDMARK_SCALES
    return args.landmark_scales


def add_overrides_option(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE ...``: config overrides, several after one flag or the flag repeated."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config values (values read as YAML), e.g. {example}",
    )


def device_from_args(name: str):
    """The torch device for a ``--device`` value, or a one-line error for a bad one."""
    from mtcnn.model.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise MtcnnError(str(exc)) from None


def detector_from_args(args: argparse.Namespace, weights: Mapping[str, Path] | None = None):
    """An :class:`~mtcnn.detect.cascade.MTCNN` built from :func:`add_detector_options` options;
    ``weights`` ``{stage: file}`` stands in for ``--weights`` when given."""
    from mtcnn.detect.cascade import MTCNN

    try:
        return MTCNN(
            weights=args.weights if weights is None else weights,
            min_face_size=args.min_face_size,
            scale_factor=args.scale_factor,
            thresholds=tuple(args.thresholds),
            mirror_onet=args.mirror_onet,
            landmark_scales=landmark_scales_from_args(args),
            device=args.device,
            batch_size=args.batch_size,
        )
    except ValueError as exc:  # bad option values: report them like any other user error
        raise MtcnnError(str(exc)) from None


def mining_weights(args: argparse.Namespace, nets: tuple[str, ...]) -> dict[str, Path]:
    """The weights files the --pnet/--rnet options name, 'shipped' resolved to the package's own."""
    from mtcnn.model.weights import stage_weights_file

    return {net: stage_weights_file(getattr(args, net), net) for net in nets}
