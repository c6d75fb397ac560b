"""User-facing problems: errors (one line; the CLI exits 2) and warnings (one line on stderr)."""

import os
import sys


class SeqtextError(Exception):
    """A user-facing error: printed as one line, CLI exits 2."""


class RankError(SeqtextError):
    """An error about one torchrun process's own state (its loss): every process that meets it
    says it, where the CLI prints other errors, the same in every process of a machine, once."""


class Interrupted(SeqtextError):
    """Training stopped by Ctrl-C after saving a checkpoint (CLI exits 130)."""


def warn(message: str) -> None:
    """A problem that does not stop the work (bad rows skipped, a setting that cannot apply here),
    printed as one ``warning:`` line on stderr, the same from the CLI, the Python API and spaCy.
    Under torchrun every process of a machine reads the same data and settings, so its first
    process (LOCAL_RANK 0) says it for all."""
    if speaks_for_machine():
        print(f"warning: {message}", file=sys.stderr)


def speaks_for_machine() -> bool:
    """False in torchrun's processes other than a machine's first (LOCAL_RANK 0): they read the same
    data and settings, so the first one reports what they all would."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def not_utf8(line: bytes, error: UnicodeDecodeError) -> str:
    """What is wrong with a line of a file that is not UTF-8 (after ``FILE:LINE: ``): the byte and
    its place, counted from 1, and the fix."""
    return (f"not valid UTF-8 (byte 0x{line[error.start]:02x} at byte {error.start + 1} of the line); convert the "
            "file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")
