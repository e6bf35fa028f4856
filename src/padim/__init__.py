"""PaDiM: patch distribution modelling for anomaly detection and localisation.

`Padim`, `Prediction` and `load` are imported lazily, so light entry points (the CLI's
--help, model-file inspection) do not pay for importing torch.
"""

from typing import TYPE_CHECKING, Any

from padim.errors import PadimError

__version__ = "0.1.0"
__all__ = ["Padim", "PadimError", "Prediction", "__version__", "load"]

if TYPE_CHECKING:
    from padim.model.estimator import Padim, Prediction, load


def __getattr__(name: str) -> Any:
    if name in ("Padim", "Prediction", "load"):
        from padim.model import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'padim' has no attribute {name!r}")
