"""The `padim` commands: each `cmd_<name>` takes the parsed arguments and returns an exit
status. Heavy imports happen inside the command that needs them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padim import options
from padim.errors import PadimError
from padim.files import check_output_file, check_output_folder, write_text_atomic

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


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _load(args: argparse.Namespace) -> Padim:
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


def _model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Padim(...) keyword arguments from the fit options."""
    return {
        "backbone": args.backbone,
        "size": input_size(args),
        "crop": args.crop,
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "tile_statistics": args.tile_statistics,
        "channels": args.channels,
        "embedding": args.embedding,
        "seed": args.seed,
        "weights": args.weights,
        "batch_size": args.batch_size,
        "device": args.device,
        "holdout_fraction": args.holdout,
        "threshold_quantile": args.threshold_quantile,
        "storage": args.storage,
        "score_mode": args.score_mode,
        "shrinkage": args.shrinkage,
        "statistics": args.statistics,
        "roi": getattr(args, "roi", None),
        "progress": _progress(args),
    }


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


def _check_engine(args: argparse.Namespace) -> None:
    """Ray options without --engine ray are a mistake, not something to ignore silently (the
    parser leaves them None, or False for flags, when they are not given)."""
    if args.engine == "ray":
        return
    given = [o.flag for o in RAY_OPTIONS if getattr(args, o.dest, None) is not None]
    given += [f for f in RAY_FLAGS if getattr(args, f.lstrip("-").replace("-", "_"), False)]
    if given:
        raise PadimError(f"{', '.join(given)} need --engine ray")


def _ray(args: argparse.Namespace, opt: options.Option) -> Any:
    """A Ray option's value: as given, else its default."""
    value = getattr(args, opt.dest)
    return opt.default if value is None else value


def cmd_fit(args: argparse.Namespace) -> int:
    from padim.data.datasets import training_inputs
    from padim.model.estimator import Padim

    _check_engine(args)
    check_output_file(args.out)
    data = training_inputs(args.data, args.every, args.scene)
    model = Padim(**_model_settings(args))
    if args.engine == "ray":
        from padim import ray_engine

        with ray_engine.ray_session(args.address, args.num_cpus):
            ray_engine.fit(
                model,
                data,
                shards=args.shards,
                cpus_per_task=_ray(args, options.CPUS_PER_TASK),
            )
    else:
        model.fit(data)
    if args.threshold is not None:
        model.set_threshold(args.threshold)
    model.save(args.out)
    training = model.training_
    assert training is not None and model.threshold_ is not None
    if training.warning:
        print(f"padim: warning: {training.warning}", file=sys.stderr)
    print(
        f"fitted {args.backbone} on {training.n_train} images in {training.fit_seconds:.1f} s"
        f"{' on ray' if args.engine == 'ray' else ''}; threshold {model.threshold_:.3f} "
        f"({model.threshold_source_}); wrote {args.out}"
    )
    print(describe_geometry(model, args.out.stat().st_size))
    return 0


def describe_geometry(model: Any, file_bytes: int) -> str:
    """One line: input, tiles, Gaussian positions x channels, model file size, peak memory."""
    from padim.memory import process_peak_bytes

    g = model.geometry()
    tiles = g.get("tiling")
    tiling = ""
    if tiles:
        across, down = tiles["tiles"]
        tiling = (
            f", {across * down} tiles of {tiles['tile'][0]}x{tiles['tile'][1]} "
            f"(overlap {tiles['overlap']}, {tiles['statistics']} statistics)"
        )
    return (
        f"input {g['input'][0]}x{g['input'][1]}{tiling}; {g['positions']:,} positions x "
        f"{g['embedding_dim']} channels; model file {file_bytes / 2**20:.1f} MiB; "
        f"fit peak memory {process_peak_bytes() / 2**30:.2f} GiB"
    )


def cmd_fit_many(args: argparse.Namespace) -> int:
    from padim.model import fit_many

    _check_engine(args)
    settings = _model_settings(args)

    def report(row: dict) -> None:
        if row["status"] == "fitted":
            print(
                f"{row['model']}: fitted on {row['n_train']} images in {row['seconds']:.1f} s, "
                f"threshold {row['threshold']:.3f}",
                flush=True,
            )
        elif row["status"] == "kept":
            print(
                f"{row['model']}: kept {args.out / row['file']} (--overwrite to re-fit)", flush=True
            )
        else:
            print(f"{row['model']}: failed: {row['error']}", file=sys.stderr, flush=True)

    if args.engine == "ray":
        from padim import ray_engine

        def remote(jobs, paths):
            return ray_engine.fit_models(jobs, paths, settings, _ray(args, options.CPUS_PER_MODEL))

        with ray_engine.ray_session(args.address, args.num_cpus):
            rows = fit_many.run(args.manifest, args.out, settings, args.overwrite, remote, report)
    else:
        rows = fit_many.run(args.manifest, args.out, settings, args.overwrite, report=report)
    bad = [r["model"] for r in rows if r["status"] == "failed"]
    summary = args.out / "fit-many.csv"
    if bad:
        raise PadimError(
            f"{len(bad)} of {len(rows)} models failed ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}): see {summary}"
        )
    print(f"{len(rows)} models in {args.out}; summary {summary}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from padim.deploy.predict import write_predictions
    from padim.deploy.scorers import load_scorer

    _check_engine(args)
    if args.engine == "ray":
        return _predict_ray(args)
    scorer = load_scorer(args.model, args.device, args.threads, args.score_mode)
    results = write_predictions(
        scorer,
        args.inputs,
        args.out,
        threshold=args.threshold,
        images=not args.no_images,
        batch_size=args.batch_size,
        progress=_progress(args),
        operating_point=args.operating_point,
        min_area=args.min_area,
        every=args.every,
    )
    failed = sum(r.error != "" for r in results)
    flagged = sum(bool(r.is_anomalous) for r in results)
    where = args.out / "results.csv"
    if failed == len(results):
        raise PadimError(
            f"none of the {failed} images could be scored (first: {results[0].error}); see {where}"
        )
    print(f"scored {len(results) - failed} images: {flagged} anomalous; wrote {where}")
    if failed:
        print(
            f"padim: warning: {failed} of {len(results)} images could not be scored "
            f"(error rows in {where})",
            file=sys.stderr,
        )
    return 0


def _predict_ray(args: argparse.Namespace) -> int:
    from padim import ray_engine
    from padim.data.pictures import PICTURES
    from padim.data.video import is_video

    if args.no_images or args.threads:
        raise PadimError(
            "--no-images and --threads are the local engine's: the Ray engine "
            "writes pictures only with --maps and uses --cpus-per-worker threads"
        )
    if any(is_video(p) for p in args.inputs):
        raise PadimError("videos are scored by the local engine: leave out --engine ray")
    check_output_folder(args.out, args.inputs)
    opts = ray_engine.BulkOptions(
        workers=args.workers,
        cpus_per_worker=_ray(args, options.CPUS_PER_WORKER),
        batch_size=args.batch_size,
        threshold=args.threshold,
        operating_point=args.operating_point,
        min_area=args.min_area,
        score_mode=args.score_mode,
        fmt=_ray(args, options.RESULT_FORMAT),
        maps=(PICTURES if args.maps else ()) + (("map",) if args.raw_maps else ()),
        retry_errors=args.retry_errors,
        progress=_progress(args),
    )
    with ray_engine.ray_session(args.address, args.num_cpus):
        summary = ray_engine.predict(args.model, args.inputs, args.out, opts)
    rate = summary.get("images_per_second")
    print(
        f"scored {summary['scored_now']} images ({summary['skipped_done']} already done) with "
        f"{summary['workers']} worker{'s' if summary['workers'] != 1 else ''}"
        f"{f' ({rate:.1f} img/s after start-up)' if rate else ''}: "
        f"{summary['anomalous']} anomalous, {summary['errors']} errors of "
        f"{summary['images']}; wrote {args.out / summary['results']}"
    )
    return 0


def _labelled_samples(args: argparse.Namespace, masks: Path | None = None) -> list[Sample]:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from padim.evaluation.evaluate import add_metrics, score_run
    from padim.evaluation.metrics import format_metric
    from padim.memory import release_free_memory

    for path in (args.json, args.figure):
        if path is not None:
            check_output_file(path, "--json/--figure")
    samples = _labelled_samples(args, args.masks)
    model = _load(args)
    model.progress = _progress(args)
    perturbation = None
    if args.perturb:
        from padim.evaluation.perturb import make_perturbation

        cfg = model.config
        perturbation = make_perturbation(args.perturb, cfg.size, cfg.crop, args.seed)
    run = score_run(model, samples, perturbation)
    del model  # its Gaussians are not needed for the metrics, whose pixel sort is the peak
    release_free_memory()
    m = add_metrics(run, args.min_area).metrics
    print(
        f"images {m['n_images']} ({m['n_good']} good, {m['n_anomalous']} anomalous), "
        f"threshold {m['threshold']:.3f}"
    )
    for key in (
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "region_recall",
        "false_regions_per_good_image",
        "image_f1",
        "pixel_f1",
        "image_f1_at_threshold",
        "image_balanced_accuracy",
        "image_accuracy_at_threshold",
    ):
        print(f"  {key:28s} {format_metric(m.get(key), 4)}")
    for defect, value in (m.get("per_type_image_auroc") or {}).items():
        print(f"  {f'image_auroc[{defect}]':28s} {format_metric(value, 4)}")
    for note in m.get("notes", []):
        print(f"  note: {note}")
    if args.json:
        write_text_atomic(args.json, json.dumps(m, indent=2) + "\n")
    if args.figure:
        from padim.evaluation.figures import report_figure

        report_figure(run, args.figure)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from padim.evaluation.benchmark import BenchmarkOptions, run_benchmark

    opts = BenchmarkOptions(
        root=args.root,
        out=args.out,
        categories=args.categories,
        backbones=list(args.backbones),
        size=input_size(args),
        crop=args.crop,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        tile_statistics=args.tile_statistics,
        channels=args.channels,
        embedding=args.embedding,
        seed=args.seed,
        weights=args.weights,
        storage=args.storage,
        score_mode=args.score_mode,
        shrinkage=args.shrinkage,
        batch_size=args.batch_size,
        device=args.device,
        perturb=args.perturb,
        geometries=args.geometries,
        compare_published=args.compare_published,
        keep_models=args.keep_models,
        figures=not args.no_figures,
        progress=_progress(args),
        command="padim " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else "",
        every=args.every,
    )
    results = run_benchmark(opts)
    print(
        f"benchmarked {len(results)} runs; wrote {args.out / 'tables.md'}, results.json, "
        f"results.csv" + ("" if args.no_figures else " and figures/")
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from padim.model.estimator import Padim

    out = args.out or args.model
    check_output_file(out)
    given = {
        "--threshold": args.threshold is not None,
        "--target-fpr": args.target_fpr is not None,
        "--target-recall": args.target_recall is not None,
        "--use": args.use is not None,
    }
    if sum(given.values()) > 1:
        raise PadimError(f"give one of {', '.join(given)}, not several")
    has_data = args.data is not None or bool(args.good) or bool(args.defective)
    if (args.threshold is not None or args.use is not None) and has_data:
        raise PadimError("--threshold and --use take no data")
    # the training statistics, when the file has them, are written back unchanged
    model = Padim.load(args.model, args.device, args.batch_size, statistics=True)
    model.progress = _progress(args)
    if args.use is not None:
        model.use_operating_point(args.use)
    elif args.threshold is not None:
        model.set_threshold(args.threshold, name=args.name or "manual")
    elif args.target_fpr is not None and not has_data:
        model.calibrate_fpr(args.target_fpr, name=args.name)
    else:
        samples = _labelled_samples(args)
        labels = np.array([s.label for s in samples])
        if args.target_fpr is not None:
            good = [s.path for s in samples if s.label == 0]
            if not good:
                raise PadimError("--target-fpr needs good images; the data has none")
            scores, _ = model.score(good)
            model.calibrate_fpr(
                args.target_fpr, scores, f"{len(good)} given good images", name=args.name
            )
        else:
            scores, _ = model.score([s.path for s in samples])
            if args.target_recall is not None:
                model.calibrate_recall(scores, labels, args.target_recall, name=args.name)
            else:
                model.calibrate(scores, labels, name=args.name or "f1")
    model.save(out)
    name = model.operating_point_
    point = model.operating_points_[name] if name is not None else None
    print(f"threshold {model.threshold_:.4f}, operating point {name}: {model.threshold_source_}")
    if point is not None and point.warning:
        print(f"padim: warning: {point.warning}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from padim.data.sources import source_paths
    from padim.model.estimator import Padim

    check_output_file(args.out)
    model = Padim.load(args.model, args.device, args.batch_size, statistics=True)
    model.progress = _progress(args)
    single = len(args.inputs) == 1 and args.inputs[0].is_dir()
    before = model.training_.n_train if model.training_ else 0
    model.partial_fit(args.inputs[0] if single else source_paths(args.inputs))
    model.save(args.out)
    training = model.training_
    assert training is not None and training.updates and model.threshold_ is not None
    last = training.updates[-1]
    print(
        f"added {last['added']} images ({last['held_out']} held out for the threshold) in "
        f"{last['seconds']:.1f} s: {before} -> {training.n_train} training images; threshold "
        f"{model.threshold_:.3f} ({model.threshold_source_}); wrote {args.out}"
    )
    stale = [p.name for p in model.operating_points_.values() if p.warning]
    if stale:
        print(
            f"padim: warning: operating points {', '.join(stale)}: see padim info", file=sys.stderr
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from padim.service.server import run_server
    from padim.service.settings import MB, ServeSettings

    if args.max_upload_mb <= 0 or args.max_wait_ms < 0:
        raise PadimError("--max-upload-mb must be positive and --max-wait-ms non-negative")
    if not (args.body_timeout > 0 and args.header_timeout > 0):
        raise PadimError("--body-timeout and --header-timeout must be positive")
    upload = int(args.max_upload_mb * MB)
    settings = ServeSettings(
        max_upload_bytes=upload,
        max_request_bytes=max(upload * 5, upload + MB),
        max_batch_images=args.max_batch_images,
        max_pixels=args.max_pixels,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        examples=tuple(args.examples),
        body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout,
        max_decodes=args.max_decodes or 0,
        log_level=args.log_level,
        max_loaded=args.max_loaded,
        reload_s=args.reload_interval,
    )
    if args.reload_interval < 0:
        raise PadimError("--reload-interval must be 0 (never) or positive")
    run_server(
        args.models,
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        device=args.device,
        log_level=args.log_level,
        threads=args.threads,
    )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from padim.data.video import av_module
    from padim.deploy import watch
    from padim.deploy.scorers import load_scorer, resolve_threshold

    av_module()  # the install hint before any model is loaded
    if args.speed < 0 or (args.duration is not None and args.duration <= 0):
        raise PadimError("--speed must be 0 or positive and --duration positive")
    if args.webhook_timeout <= 0:
        raise PadimError("--webhook-timeout must be positive")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise PadimError(f"--out must be a folder: {args.out}")
    scorer = load_scorer(args.model, args.device, args.threads)
    opts = watch.WatchOptions(
        threshold=resolve_threshold(scorer, args.threshold, args.operating_point),
        min_area=args.min_area,
        speed=args.speed,
        duration=args.duration,
        max_frames=args.max_frames,
        reconnects=args.reconnects,
        report_every=0 if args.quiet else 5.0,
    )
    sinks: list[watch.Sink] = []
    if args.webhook:
        sinks.append(watch.WebhookSink(args.webhook, args.webhook_retries, args.webhook_timeout))
    if args.out is not None:
        sinks.append(watch.FolderSink(args.out, scorer))

    def report(line: str) -> None:
        print(f"padim: watching {line}", file=sys.stderr, flush=True)

    stats = watch.watch(scorer, args.source, sinks, opts, report)
    if stats.source_error and stats.read == 0:
        raise PadimError(stats.source_error)
    print(f"watched {stats.line()}")
    if args.out is not None:
        print(f"wrote {watch.write_summary(args.out, stats)}")
    if stats.source_error:
        print(f"padim: warning: the source failed: {stats.source_error}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from padim.deploy.export import export_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = export_model(
        args.model,
        args.out,
        args.format,
        args.opset,
        args.external_data or None,
        args.fp16,
        args.verify or (),
        args.tolerance,
        args.threads,
    )
    print(
        f"exported {r.path} ({r.fmt}); on {r.n_checked} {r.checked_on} images: max relative "
        f"score difference {r.max_rel_score_diff:.2e}, map {r.max_rel_map_diff:.2e}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    suffix = args.model.suffix.lower()
    if suffix in (".onnx", ".xml"):
        from padim.deploy.scorers import load_scorer

        print(json.dumps(load_scorer(args.model).describe(), indent=2))
        return 0
    from padim.model.modelfile import read_model_config

    print(json.dumps(read_model_config(args.model), indent=2))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from padim.core.backbones import available_backbones, get_backbone

    for name in available_backbones():
        spec = get_backbone(name)
        print(
            f"{name:18s} channels {spec.total_channels:4d} (keep {spec.default_keep:3d})  "
            f"{'offline' if spec.offline else 'download'}  {spec.weights_source}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from padim.evaluation.demo import run_demo

    report = run_demo(
        args.out,
        texture=args.texture,
        device=args.device,
        batch_size=args.batch_size,
        progress=_progress(args),
    )
    print(f"demo report: {report}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from padim.data.download import LICENSE_NOTE, download_mvtec

    print(LICENSE_NOTE, file=sys.stderr)
    paths = download_mvtec(args.root, args.category)
    print(f"MVTec AD ready: {', '.join(str(p) for p in paths)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "fit": cmd_fit,
    "fit-many": cmd_fit_many,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "benchmark": cmd_benchmark,
    "calibrate": cmd_calibrate,
    "update": cmd_update,
    "serve": cmd_serve,
    "watch": cmd_watch,
    "export": cmd_export,
    "info": cmd_info,
    "backbones": cmd_backbones,
    "demo": cmd_demo,
    "download": cmd_download,
}
