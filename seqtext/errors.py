class SeqtextError(Exception):
    """A user-facing error: printed as one line, CLI exits 2."""
