"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class PadimError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model, missing weights."""
