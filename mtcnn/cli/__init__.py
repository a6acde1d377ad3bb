"""Console entry points: ``mtcnn <command>`` and ``train-pnet``/``train-rnet``/``train-onet``.

Thin by design: each command parses its options, calls the library and prints results. Errors
the user can fix (a missing file, a bad config key) print as ``error: <one line>`` with exit
status 2; a batch with some unreadable inputs finishes and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mtcnn import __version__
from mtcnn.allocator import retain_freed_memory
from mtcnn.atomic import os_error_message
from mtcnn.cli import bench, detect, eval, export, pipeline, prep, train
from mtcnn.cli.options import CommandParser
from mtcnn.errors import MtcnnError
from mtcnn.spec import STAGE_NAMES

log = logging.getLogger("mtcnn")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="mtcnn", description="MTCNN face detection: detect, prepare data, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (detect, train, prep, eval, export, pipeline, bench):
        command.add_parser(subparsers)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv``, run the chosen command, and turn user errors into one line and a status.

    An ``OSError`` (a file the system refused to read or write) is one line too, with the file and
    the reason; ``--verbose`` logs its traceback.
    """
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    retain_freed_memory()
    try:
        return args.run(args)
    except MtcnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write site that missed OutputError: still one line, not a traceback
        log.debug("the error below came from here:", exc_info=True)
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """``mtcnn`` console script."""
    return run_command(build_parser(), argv)


def _train_command(stage: str, argv: list[str] | None) -> int:
    parser = CommandParser(
        prog=f"train-{stage}",
        description=f"Train {STAGE_NAMES[stage]} on its prepared sample store, as the "
        "train section of its config says.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    train.add_train_options(parser)
    parser.set_defaults(run=train.run_train, stage=stage)
    return run_command(parser, argv)


def train_pnet(argv: list[str] | None = None) -> int:
    """``train-pnet`` console script."""
    return _train_command("pnet", argv)


def train_rnet(argv: list[str] | None = None) -> int:
    """``train-rnet`` console script."""
    return _train_command("rnet", argv)


def train_onet(argv: list[str] | None = None) -> int:
    """``train-onet`` console script."""
    return _train_command("onet", argv)
