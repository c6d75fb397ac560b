class SeqtextError(Exception):
    """A user-facing error: printed as one line, CLI exits 2."""


class Interrupted(SeqtextError):
    """Training stopped by Ctrl-C after saving a checkpoint (CLI exits 130)."""
