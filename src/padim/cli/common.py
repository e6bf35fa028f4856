"""What several `padim` commands share: threads, progress, loading a model, the fit options as
`Padim` parameters, the Ray engine's options and labelled data. Light to import."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padim import options
from padim.errors import PadimError

if TYPE_CHECKING:
    from padim.data.datasets import Sample
    from padim.model.estimator import Padim


def apply_threads(args: argparse.Namespace) -> None:
    """--threads for torch, except where the command hands it to its runtime (maybe not torch)."""
    if args.command in ("predict", "serve", "export", "watch"):
        return
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def load_model(args: argparse.Namespace) -> Padim:
    from padim.model.estimator import Padim

    return Padim.load(
        args.model,
        device=args.device,
        batch_size=args.batch_size,
        score_mode=getattr(args, "score_mode", None),
    )


def input_size(args: argparse.Namespace) -> int | tuple[int, int] | str:
    """--size as given; when not given: native with --tile, else the default."""
    if args.size is not None:
        return args.size
    return "native" if args.tile is not None else options.SIZE.default


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Padim(...) keyword arguments from the fit options (`options.MODEL_OPTIONS` and
    `options.THRESHOLD_OPTIONS` where the command has them, and the run-time ones)."""
    declared = (*options.MODEL_OPTIONS, *options.THRESHOLD_OPTIONS, *options.ALIGNMENT_OPTIONS)
    settings = {o.name: getattr(args, o.dest) for o in declared if hasattr(args, o.dest)}
    settings.update(
        size=input_size(args),
        batch_size=args.batch_size,
        device=args.device,
        score_mode=args.score_mode,
        roi=getattr(args, "roi", None),
        progress=progress(args),
    )
    return settings


RAY_OPTIONS = (
    options.ADDRESS,
    options.NUM_CPUS,
    options.SHARDS,
    options.CPUS_PER_TASK,
    options.CPUS_PER_MODEL,
    options.WORKERS,
    options.CPUS_PER_WORKER,
    options.RESULT_FORMAT,
)
RAY_FLAGS = ("--maps", "--raw-maps", "--retry-errors")


def check_engine(args: argparse.Namespace) -> None:
    """Ray options without --engine ray are a mistake, not something to ignore silently (the
    parser leaves them None, or False for flags, when they are not given)."""
    if args.engine == "ray":
        return
    given = [o.flag for o in RAY_OPTIONS if getattr(args, o.dest, None) is not None]
    given += [f for f in RAY_FLAGS if getattr(args, f.lstrip("-").replace("-", "_"), False)]
    if given:
        raise PadimError(f"{', '.join(given)} need --engine ray")


def ray_option(args: argparse.Namespace, opt: options.Option) -> Any:
    """A Ray option's value: as given, else its default."""
    value = getattr(args, opt.dest)
    return opt.default if value is None else value


def labelled_samples(args: argparse.Namespace, masks: Path | None = None) -> list[Sample]:
    from padim.data.datasets import folder_test_set, is_stc, mvtec_test_set, stc_test_set

    if args.data is not None and (args.good or args.defective):
        raise PadimError("give either DATA or --good/--defective folders, not both")
    if args.data is not None and is_stc(args.data):
        return stc_test_set(args.data, getattr(args, "every", 1), getattr(args, "scene", None))
    if args.data is not None:
        return mvtec_test_set(args.data)
    if not (args.good or args.defective):
        raise PadimError("no labelled data: give an MVTec AD category folder or --good/--defective")
    return folder_test_set(args.good, args.defective, masks)


def check_inputs(model: Path, inputs: list[Path] | tuple[Path, ...] = ()) -> None:
    """The model file and every input exist: said in one line before anything is loaded."""
    if not model.is_file():
        raise PadimError(f"model file not found: {model}")
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PadimError(f"input not found: {missing[0]}{more}")
