"""The exception types the CLI and the REST service turn into one-line messages."""


class PadimError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model, missing weights."""


class BadImage(PadimError):
    """An input that is not a usable image; `code` names why (for API clients)."""

    def __init__(self, message: str, code: str = "bad_image") -> None:
        super().__init__(message)
        self.code = code
