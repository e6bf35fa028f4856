"""Optional dependencies: each optional folder of padim names the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from padim.errors import PadimError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or fail with one line saying which `padim[extra]` installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PadimError(
            f"{what} needs {module.split('.')[0]}: pip install 'padim[{extra}]'"
        ) from None
