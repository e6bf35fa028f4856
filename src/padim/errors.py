"""The exception types the CLI and the REST service turn into one-line messages."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line (at most `limit` characters), or its type's
    name when it has none: what a one-line error report shows of a cause."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class PadimError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model, missing weights."""


class NotFound(PadimError):
    """Something asked for by name that is not there (a product, version, alias, token)."""


class BadImage(PadimError):
    """An input that is not a usable image; `code` names why (for API clients)."""

    def __init__(self, message: str, code: str = "bad_image") -> None:
        super().__init__(message)
        self.code = code
