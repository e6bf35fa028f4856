"""PaDiM: patch distribution modelling for anomaly detection and localisation.

`Padim`, `Prediction` and `load` are imported lazily, so light entry points (the CLI's
--help, model-file inspection) do not pay for importing torch.
"""

import os
from typing import TYPE_CHECKING, Any

from padim.errors import PadimError

# torch's OpenMP threads (GNU libgomp) spin ~300,000 times waiting for work before they sleep:
# on a machine other work shares, that spinning takes the cores the work needs, and every
# command ran 2-10x slower than with one thread. 1,000 spins keep the idle speed and degrade
# gracefully under load (bottle predict, 2 cores: idle 3.1 s either way; two busy processes
# beside it: 12.1 s by default, 5.2 s so). Set before torch loads; a user's own value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
__all__ = ["Padim", "PadimError", "Prediction", "__version__", "load"]

if TYPE_CHECKING:
    from padim.model.estimator import Padim, Prediction, load


def __getattr__(name: str) -> Any:
    if name in ("Padim", "Prediction", "load"):
        from padim.model import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'padim' has no attribute {name!r}")
