"""Exceptions that carry a one-line message meant for the user.

The command line prints ``error: <message>`` for these and exits non-zero, instead of a
traceback; anything else escaping is a bug.
"""


class MtcnnError(Exception):
    """Base class: bad input, files or settings, described in one line."""


class ImageReadError(MtcnnError):
    """An image file is missing, unreadable or corrupt."""


class WeightsError(MtcnnError):
    """A weights or checkpoint file is missing, of the wrong net, or malformed."""


class ConfigError(MtcnnError):
    """A configuration file or override is invalid."""


class DataError(MtcnnError):
    """An annotation file or prepared sample store is malformed."""


class OutputError(MtcnnError):
    """A file or folder could not be written: disk full, no permission, read-only, in the way."""


class MemoryLimitError(MtcnnError):
    """The work asked would take more memory than the machine has free: ``subject`` (what was
    asked, e.g. an image's name) and ``detail`` (how much, what to do), shown as one line."""

    def __init__(self, subject: str, detail: str) -> None:
        super().__init__(f"{subject}: {detail}")
        self.detail = detail
