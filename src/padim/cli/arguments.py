"""Argument types and the option groups several commands share, built from `padim.options`
(flags, defaults, choices, help); light to import, so `padim --help` starts instantly."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from padim import options
from padim.options import Option

# ----------------------------------------------------------------------------- argument types


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argument type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def share(upper_inclusive: bool) -> Callable[[str], float]:
    """An argument type: a number in [0, 1] (or [0, 1) when not `upper_inclusive`)."""
    interval = "[0, 1]" if upper_inclusive else "[0, 1)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (0 <= value <= 1 if upper_inclusive else 0 <= value < 1):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value

    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)
fraction = share(upper_inclusive=False)
probability = share(upper_inclusive=True)


def geometry(text: str) -> int | tuple[int, int]:
    """N or WIDTHxHEIGHT, sides at least 1."""
    from padim.data.preprocess import parse_size
    from padim.errors import PadimError

    try:
        value = parse_size(text)
    except PadimError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if min(value if isinstance(value, tuple) else (value,)) < 1:
        raise argparse.ArgumentTypeError(f"sides must be at least 1, got {text!r}")
    return value


def size(text: str) -> int | tuple[int, int] | str:
    lowered = text.lower()
    return lowered if lowered in ("auto", "native") else geometry(text)


def crop(text: str) -> int | tuple[int, int] | str | None:
    lowered = text.lower()
    if lowered in ("none", "default"):
        return None if lowered == "none" else "default"
    return geometry(text)


def channels(text: str) -> int | str:
    return "all" if text.lower() == "all" else positive_int(text)


PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "path": Path,
    "fraction": fraction,
    "geometry": geometry,
    "size": size,
    "crop": crop,
    "channels": channels,
}
"""How the command line reads an `Option` of each `kind`."""


def add(group: Any, opt: Option, ray_only: bool = False, **kwargs: Any) -> None:
    """One option from its `Option` spec (flag, default, choices, kind, help); Ray-only options
    default to None ("not given")."""
    kwargs.setdefault("default", None if ray_only else opt.default)
    if opt.choices is not None and "choices" not in kwargs and kwargs.get("action") is None:
        kwargs["choices"] = opt.choices
    if opt.kind is not None and "type" not in kwargs:
        kwargs["type"] = PARSERS[opt.kind]
    group.add_argument(opt.flag, help=opt.describe(), **kwargs)


# ----------------------------------------------------------------------------- option groups


def add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    add(g, options.DEVICE)
    add(g, options.THREADS, type=positive_int)
    add(g, options.BATCH_SIZE, type=positive_int)
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_engine(p: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group("engine")
    g.add_argument(
        options.ENGINE.flag,
        choices=options.ENGINES,
        default=options.ENGINE.default,
        help=f"{options.ENGINE.describe()}; with ray: {what}",
    )
    add(g, options.ADDRESS, ray_only=True)
    add(g, options.NUM_CPUS, ray_only=True, type=positive_int)
    return g


# what the parser does differently from an option's spec: the backbone's names are checked
# by the registry (and listed by `padim backbones`); no --size means 256, or native with --tile
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    options.BACKBONE.flag: {"choices": None, "metavar": "NAME"},
    options.SIZE.flag: {"default": None},
}


def add_model_options(
    p: argparse.ArgumentParser, threshold: bool = True, fixed_threshold: bool = True
) -> None:
    """The options that define a model (`options.MODEL_OPTIONS`) and, with `threshold`, how
    its threshold is calibrated (`options.THRESHOLD_OPTIONS`, and --threshold)."""
    g = p.add_argument_group("model")
    for opt in options.MODEL_OPTIONS:
        add(g, opt, **MODEL_OVERRIDES.get(opt.flag, {}))
    g = p.add_argument_group(
        "alignment", "parts that are never in the same place twice (docs/alignment.md)"
    )
    for opt in options.ALIGNMENT_OPTIONS:
        add(g, opt, metavar="IMAGE" if opt is options.ALIGN_REFERENCE else None)
    if not threshold:
        return
    g = p.add_argument_group("threshold")
    for opt in options.THRESHOLD_OPTIONS:
        add(g, opt)
    if fixed_threshold:
        add(g, options.THRESHOLD)


def add_score_mode(p: argparse.ArgumentParser, fitting: bool) -> None:
    """--score-mode: the mode a fit calibrates for, or (scoring) another mode than the model's."""
    if fitting:
        add(p, options.SCORE_MODE)
    else:
        p.add_argument(
            options.SCORE_MODE.flag,
            choices=options.SCORE_MODES,
            default=None,
            help="score with this mode instead of the model's (its own calibrated "
            f"threshold): {options.SCORE_MODE.help}",
        )


def add_labelled_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("data", type=Path, nargs="?", help=f"{what} (MVTec AD category folder)")
    p.add_argument("--good", type=Path, help="folder of good images")
    p.add_argument(
        "--defective",
        type=Path,
        action="append",
        default=[],
        help="folder of defective images (repeatable)",
    )
