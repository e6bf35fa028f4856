"""The `padim` command line: fit, fit-many, predict, evaluate, benchmark, calibrate, serve,
export, info, backbones, demo, download.

User mistakes end with one line on stderr (`padim: error: ...`) and exit status 1 (2 for bad
usage); outputs are written atomically, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from padim import DEFAULT_BACKBONE, __version__
from padim.errors import PadimError

EPILOG = "Run 'padim COMMAND --help' for a command's options. Docs: README.md."


# ----------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _crop(text: str) -> int | None:
    return None if text.lower() == "none" else _positive_int(text)


def _channels(text: str) -> int | str:
    return "all" if text.lower() == "all" else _positive_int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's own default)")
    g.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_engine(p: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help=f"local (this process, default) or ray: {what} "
                   "(needs pip install 'padim[ray]')")
    g.add_argument("--address", default=None,
                   help="ray: the cluster to use (host:port of its head, or 'auto' for the one "
                   "this node belongs to); default: start a local Ray on this machine")
    g.add_argument("--num-cpus", type=_positive_int, default=None,
                   help="ray: CPUs of the local Ray started when no --address is given "
                   "(default: all)")
    return g


def _add_fit_options(p: argparse.ArgumentParser, threshold: bool = True,
                     fixed_threshold: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"feature extractor (default {DEFAULT_BACKBONE}, works offline; "
                   "'padim backbones' lists them all)")
    g.add_argument("--size", type=_positive_int, default=256, help="resize to N x N (default 256)")
    g.add_argument("--crop", type=_crop, default=224,
                   help="centre crop N x N after resizing, or 'none' (default 224, the paper's "
                   "protocol; anomalib's is --size 256 --crop none)")
    g.add_argument("--channels", type=_channels, default=None,
                   help="embedding channels kept by random selection, N or 'all' "
                   "(default: the backbone's: 100 resnet18, 550 wide_resnet50_2, all for Lite)")
    g.add_argument("--seed", type=int, default=0, help="seed of the channel selection and split")
    g.add_argument("--weights", default=None,
                   help="FILE: a local state dict for the backbone; 'random': random init "
                   "(tests and speed measurements only); default: the ImageNet weights")
    g.add_argument("--shrinkage", choices=["none", "ledoit-wolf"], default="none",
                   help="covariance shrinkage before the 0.01*I regularisation: ledoit-wolf "
                   "(per position, for few training images) or none (default, the paper)")
    g.add_argument("--storage", choices=["float16", "float32"], default="float16",
                   help="precision of the whitening matrices in the model file (default "
                   "float16: half the size, scores within 1e-4; float32: bit-exact reloads)")
    if not threshold:
        return
    g = p.add_argument_group("threshold")
    g.add_argument("--holdout", type=_fraction, default=0.2,
                   help="fraction of good training images held out to calibrate the threshold "
                   "(default 0.2; they are added to the model afterwards)")
    g.add_argument("--threshold-quantile", type=float, default=0.99,
                   help="threshold = this quantile of the held-out good scores (default 0.99)")
    if fixed_threshold:
        g.add_argument("--threshold", type=float, default=None,
                       help="use this threshold instead of calibrating one")


SCORE_MODES = ("mahalanobis", "chebyshev", "hybrid", "hybrid-scaled")  # as padim.scoring


def _add_score_mode(p: argparse.ArgumentParser, default: str | None) -> None:
    what = ("patch score the model is fitted and calibrated for" if default else
            "score with this mode instead of the model's (its own calibrated threshold)")
    p.add_argument("--score-mode", choices=SCORE_MODES, default=default,
                   help=f"{what}: mahalanobis (the paper), chebyshev, hybrid (published "
                   "average), hybrid-scaled (terms standardised on good images)"
                   + (f"; default {default}" if default else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padim",
        description="PaDiM anomaly detection: fit on good images, localise defects, evaluate.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"padim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("fit", help="fit a model on good images",
                       description="Fit a model on good images: an MVTec AD category folder "
                       "(uses train/good) or a folder of good images.")
    p.add_argument("data", type=Path, help="MVTec AD category folder or a folder of good images")
    p.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    _add_fit_options(p)
    _add_score_mode(p, "mahalanobis")
    _add_runtime(p)
    g = _add_engine(p, "the batches are sharded over Ray tasks and their sums merged exactly")
    g.add_argument("--shards", type=_positive_int, default=None,
                   help="ray: number of shards (default: one per cluster CPU)")
    g.add_argument("--cpus-per-task", type=_positive_int, default=1,
                   help="ray: CPUs (torch threads) per shard task (default 1)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "fit-many", help="fit one model per product/category listed in a manifest",
        description="Fit one model per name in a manifest (CSV or Parquet with columns 'model' "
        "and 'path': a folder of good images, an MVTec AD category or one image; several rows "
        "may name one model). Writes OUT/<model>.safetensors and OUT/fit-many.csv; models "
        "already in OUT are kept unless --overwrite; one failing model does not stop the rest.")
    p.add_argument("manifest", type=Path, help="CSV or Parquet manifest (columns model, path)")
    p.add_argument("--out", type=Path, required=True, help="folder for the model files")
    p.add_argument("--overwrite", action="store_true", help="re-fit models already in OUT")
    _add_fit_options(p, fixed_threshold=False)
    _add_score_mode(p, "mahalanobis")
    _add_runtime(p)
    g = _add_engine(p, "the models are fitted in parallel Ray tasks")
    g.add_argument("--cpus-per-model", type=_positive_int, default=1,
                   help="ray: CPUs (torch threads) per model task (default 1)")
    p.set_defaults(func=cmd_fit_many)

    p = sub.add_parser("predict", help="score images, write CSV/JSON, heat maps and masks",
                       description="Score images; writes DIR/results.csv (path,score,label), "
                       "DIR/results.json and per-image overlay, heat-map and mask PNGs.")
    p.add_argument("model", type=Path,
                   help="model file (.safetensors), or an export (.onnx, OpenVINO .xml)")
    p.add_argument("inputs", type=Path, nargs="+",
                   help="image files, folders of images and/or CSV/Parquet manifests (a 'path' "
                   "column; relative paths are relative to the manifest)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    p.add_argument("--no-images", action="store_true", help="only write results.csv/json")
    _add_score_mode(p, None)
    _add_runtime(p)
    g = _add_engine(p, "a Ray Data pipeline of scoring actors writes a resumable job folder: "
                    "DIR/results.parquet (or .csv), summary.json, parts/ and, with --maps, maps/;"
                    " folders are searched recursively, a re-run scores only what is missing")
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="ray: scoring actors, each holding the model (default: one per CPU)")
    g.add_argument("--cpus-per-worker", type=_positive_int, default=1,
                   help="ray: CPUs (torch threads) per scoring actor (default 1)")
    g.add_argument("--format", choices=["parquet", "csv"], default="parquet",
                   help="ray: format of DIR/results (default parquet)")
    g.add_argument("--maps", action="store_true",
                   help="ray: also write overlay, heat-map and mask PNGs to DIR/maps")
    g.add_argument("--raw-maps", action="store_true",
                   help="ray: also write each raw anomaly map (float16 .npy, input size) to "
                   "DIR/maps, to re-threshold later without scoring again")
    g.add_argument("--retry-errors", action="store_true",
                   help="ray: score again the images that failed in an earlier run")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="image and pixel AUROC on a labelled test set",
                       description="Evaluate on an MVTec AD category folder (test/, "
                       "ground_truth/) or on plain folders given with --good/--defective/--masks.")
    p.add_argument("model", type=Path, help="model file")
    p.add_argument("data", type=Path, nargs="?", help="MVTec AD category folder")
    p.add_argument("--good", type=Path, help="folder of good test images")
    p.add_argument("--defective", type=Path, action="append", default=[],
                   help="folder of defective test images (repeatable)")
    p.add_argument("--masks", type=Path, help="folder of masks named like the defective images")
    p.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    p.add_argument("--figure", type=Path, help="write a picture grid of results to this PNG")
    p.add_argument("--perturb", metavar="NAME", default=None,
                   help="evaluate on perturbed test images: rd-mvtec or rd-mvtec-test (random "
                   "rotation +/-10 deg and random crop, seeded by --seed; for the paper's full "
                   "protocol the model must also be fitted on perturbed images: see benchmark)")
    p.add_argument("--seed", type=int, default=0, help="seed of --perturb")
    _add_score_mode(p, None)
    _add_runtime(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "benchmark", help="fit + evaluate backbones x MVTec AD categories, write report tables",
        description="Fit and evaluate every (backbone, category) pair found under an MVTec AD "
        "root; writes DIR/results.json, results.csv, tables.md (the published tables' layout) "
        "and figures/. Categories not present are skipped with a note.")
    p.add_argument("--root", type=Path, required=True,
                   help="MVTec AD root (one folder per category) or one category folder")
    p.add_argument("--categories", nargs="+", default=None,
                   help="categories to run (default: every one found under --root)")
    p.add_argument("--backbones", nargs="+", default=None,
                   help="backbones to run (default: efficientnet_lite0)")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--perturb", nargs="+", metavar="NAME", default=[],
                   help="also run the paper's non-aligned protocol: rd-mvtec = refit on "
                   "training images and evaluate on test images randomly rotated (+/-10 deg) "
                   "and cropped, seeded; rd-mvtec-test = the aligned model on perturbed test "
                   "images")
    p.add_argument("--compare-published", action="store_true",
                   help="add the published PaDiM rows and the differences to tables.md")
    p.add_argument("--keep-models", action="store_true", help="keep model files in DIR/models")
    p.add_argument("--no-figures", action="store_true", help="skip the per-category figures")
    _add_fit_options(p, threshold=False)
    _add_score_mode(p, "mahalanobis")
    _add_runtime(p)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("calibrate", help="set or re-calibrate a model's threshold",
                       description="Set the threshold (--threshold) or choose the F1-optimal one "
                       "on labelled validation data (MVTec layout or --good/--defective).")
    p.add_argument("model", type=Path, help="model file")
    p.add_argument("data", type=Path, nargs="?", help="labelled validation data (MVTec layout)")
    p.add_argument("--good", type=Path, help="folder of good validation images")
    p.add_argument("--defective", type=Path, action="append", default=[],
                   help="folder of defective validation images (repeatable)")
    p.add_argument("--threshold", type=float, default=None, help="set this threshold")
    p.add_argument("--out", type=Path, default=None, help="write here (default: update MODEL)")
    _add_runtime(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "serve", help="run the inspection service: REST API, web page, Prometheus metrics",
        description="Serve a model over HTTP: POST /v1/predict (+ /v1/predict/batch), "
        "GET /v1/health, /v1/model, /metrics, and a web page at /. Requests arriving together "
        "share forward passes (dynamic micro-batching).")
    p.add_argument("model", type=Path,
                   help="model file (.safetensors), or an export (.onnx, OpenVINO .xml)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for the network)")
    p.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="server processes, each with its own copy of the model (default 1)")
    p.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="largest accepted image file in MB (default 20)")
    p.add_argument("--max-batch-images", type=_positive_int, default=32,
                   help="most images in one /v1/predict/batch request (default 32)")
    p.add_argument("--max-pixels", type=_positive_int, default=50_000_000,
                   help="refuse images declaring more pixels, before decoding (default 50M)")
    p.add_argument("--max-batch", type=_positive_int, default=16,
                   help="most images per forward pass when batching (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a forward pass waits for images still being decoded "
                   "(default 5 ms; a lone request never waits)")
    p.add_argument("--no-batching", action="store_true",
                   help="one image per forward pass (requests are queued one by one)")
    p.add_argument("--examples", type=Path, nargs="+", default=[],
                   help="example images for the web page: files and/or folders (default: "
                   "built-in demo images)")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's own default)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export", help="export a model to ONNX (or OpenVINO) for torch-free deployment",
        description="Export the whole inference path (normalisation, backbone, embedding, "
        "Mahalanobis scoring, upsampling, smoothing) as one graph with a dynamic batch size; "
        "outputs `score` (N) and `anomaly_map` (N x 1 x H x W). The export is checked against "
        "the torch model before it is written.")
    p.add_argument("model", type=Path, help="model file (.safetensors)")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    p.add_argument("--out", type=Path, required=True,
                   help="FILE.onnx, or FILE.xml for openvino (.bin beside it)")
    p.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--external-data", action="store_true",
                   help="weights in FILE.data beside the graph (automatic over 2 GB)")
    p.add_argument("--fp16", action="store_true", help="openvino: compress weights to FP16")
    p.add_argument("--verify", type=Path, nargs="*", default=None,
                   help="images or folders to check parity on (default: 4 random images)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative score difference accepted (default 1e-4)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="show a model file's configuration")
    p.add_argument("model", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("backbones", help="list the available backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("demo", help="fit and evaluate on a built-in demo set (offline)",
                       description="Builds a small inspection task from real texture photos "
                       "shipped with scikit-image, with synthetic defects and exact masks; fits, "
                       "evaluates and writes a report with metrics and heat maps.")
    p.add_argument("--out", type=Path, default=Path("padim-demo"), help="output folder")
    p.add_argument("--texture", default="gravel", help="scikit-image texture: gravel, grass, brick")
    _add_runtime(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="download a public dataset (needs internet)")
    p.add_argument("dataset", choices=["mvtec"], help="dataset name")
    p.add_argument("--category", action="append", default=None,
                   help="MVTec AD category (repeatable; default: all 15)")
    p.add_argument("--root", type=Path, default=Path("data/mvtec_ad"), help="where to put it")
    p.set_defaults(func=cmd_download)
    return parser


# ----------------------------------------------------------------------------- commands


def _apply_runtime(args: argparse.Namespace) -> None:
    if args.func in (cmd_predict, cmd_serve, cmd_export):
        return  # they pass --threads to the model's runtime (which may not be torch)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _load(args: argparse.Namespace):
    from padim.model import Padim

    return Padim.load(args.model, device=args.device, batch_size=args.batch_size,
                      score_mode=getattr(args, "score_mode", None))


def _model_settings(args: argparse.Namespace) -> dict:
    """Padim(...) keyword arguments from the fit options."""
    from padim.backbones import resolve_channels

    return {
        "backbone": args.backbone, "size": args.size, "crop": args.crop,
        "channels": resolve_channels(args.backbone, args.channels), "seed": args.seed,
        "weights": args.weights, "batch_size": args.batch_size, "device": args.device,
        "holdout_fraction": args.holdout, "threshold_quantile": args.threshold_quantile,
        "storage": args.storage, "score_mode": args.score_mode, "shrinkage": args.shrinkage,
        "progress": _progress(args),
    }


def _check_engine(args: argparse.Namespace, ray_only: Sequence[str]) -> None:
    """Ray options without --engine ray are a mistake, not something to ignore silently."""
    if args.engine == "ray":
        return
    given = [o for o in ray_only if getattr(args, o.lstrip("-").replace("-", "_")) not in
             (None, False, 1, "parquet")]
    if args.address or args.num_cpus or given:
        raise PadimError(f"{', '.join(given) or '--address/--num-cpus'} need --engine ray")


def cmd_fit(args: argparse.Namespace) -> int:
    from padim.model import Padim

    _check_engine(args, ["--shards", "--cpus-per-task"])
    model = Padim(**_model_settings(args))
    if args.engine == "ray":
        from padim import ray_engine

        with ray_engine.ray_session(args.address, args.num_cpus):
            ray_engine.fit(model, args.data, shards=args.shards, cpus_per_task=args.cpus_per_task)
    else:
        model.fit(args.data)
    if args.threshold is not None:
        model.set_threshold(args.threshold)
    model.save(args.out)
    info = model.info
    if "warning" in info:
        print(f"padim: warning: {info['warning']}", file=sys.stderr)
    print(f"fitted {args.backbone} on {info['n_train']} images in {info['fit_seconds']:.1f} s"
          f"{' on ray' if args.engine == 'ray' else ''}; threshold {model.threshold:.3f} "
          f"({info['threshold_source']}); wrote {args.out}")
    return 0


def cmd_fit_many(args: argparse.Namespace) -> int:
    from padim import fit_many

    _check_engine(args, ["--cpus-per-model"])
    settings = _model_settings(args)

    def report(row: dict) -> None:
        if row["status"] == "fitted":
            print(f"{row['model']}: fitted on {row['n_train']} images in {row['seconds']:.1f} s, "
                  f"threshold {row['threshold']:.3f}", flush=True)
        elif row["status"] == "kept":
            print(f"{row['model']}: kept {args.out / row['file']} (--overwrite to re-fit)",
                  flush=True)
        else:
            print(f"{row['model']}: failed: {row['error']}", file=sys.stderr, flush=True)

    if args.engine == "ray":
        from padim import ray_engine

        def remote(jobs, paths):
            return ray_engine.fit_models(jobs, paths, settings, args.cpus_per_model)

        with ray_engine.ray_session(args.address, args.num_cpus):
            rows = fit_many.run(args.manifest, args.out, settings, args.overwrite, remote,
                                report)
    else:
        rows = fit_many.run(args.manifest, args.out, settings, args.overwrite, report=report)
    bad = [r["model"] for r in rows if r["status"] == "failed"]
    summary = args.out / "fit-many.csv"
    if bad:
        raise PadimError(f"{len(bad)} of {len(rows)} models failed ({', '.join(bad[:5])}"
                         f"{', ...' if len(bad) > 5 else ''}): see {summary}")
    print(f"{len(rows)} models in {args.out}; summary {summary}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from padim.predict_io import write_predictions
    from padim.runtime import load_scorer

    _check_engine(args, ["--workers", "--cpus-per-worker", "--format", "--maps", "--raw-maps",
                         "--retry-errors"])
    if args.engine == "ray":
        return _predict_ray(args)
    scorer = load_scorer(args.model, args.device, args.threads, args.score_mode)
    results = write_predictions(scorer, args.inputs, args.out, threshold=args.threshold,
                                images=not args.no_images, batch_size=args.batch_size,
                                progress=_progress(args))
    flagged = sum(r.is_anomalous for r in results)
    print(f"scored {len(results)} images: {flagged} anomalous; wrote {args.out / 'results.csv'}")
    return 0


def _predict_ray(args: argparse.Namespace) -> int:
    from padim import ray_engine
    from padim.viz import PICTURES

    if args.no_images or args.threads:
        raise PadimError("--no-images and --threads are the local engine's: the Ray engine "
                         "writes pictures only with --maps and uses --cpus-per-worker threads")
    opts = ray_engine.BulkOptions(
        workers=args.workers, cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size,
        threshold=args.threshold, score_mode=args.score_mode, fmt=args.format,
        maps=(PICTURES if args.maps else ()) + (("map",) if args.raw_maps else ()),
        retry_errors=args.retry_errors, progress=_progress(args))
    with ray_engine.ray_session(args.address, args.num_cpus):
        summary = ray_engine.predict(args.model, args.inputs, args.out, opts)
    rate = summary.get("images_per_second")
    print(f"scored {summary['scored_now']} images ({summary['skipped_done']} already done) with "
          f"{summary['workers']} worker{'s' if summary['workers'] != 1 else ''}"
          f"{f' ({rate:.1f} img/s after start-up)' if rate else ''}: "
          f"{summary['anomalous']} anomalous, {summary['errors']} errors of "
          f"{summary['images']}; wrote {args.out / summary['results']}")
    return 0


def _labelled_samples(args: argparse.Namespace, masks: Path | None = None):
    from padim.data import folder_test_set, mvtec_test_set

    if args.data is not None and (args.good or args.defective):
        raise PadimError("give either DATA or --good/--defective folders, not both")
    if args.data is not None:
        return mvtec_test_set(args.data)
    if not (args.good or args.defective):
        raise PadimError("no labelled data: give an MVTec AD category folder or --good/--defective")
    return folder_test_set(args.good, args.defective, masks)


def _metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from padim.evaluation import evaluate, report_figure
    from padim.modelfile import write_text_atomic

    samples = _labelled_samples(args, args.masks)
    model = _load(args)
    model.progress = _progress(args)
    perturbation = None
    if args.perturb:
        from padim.perturb import make_perturbation

        cfg = model.config
        perturbation = make_perturbation(args.perturb, cfg.size, cfg.crop, args.seed)
    run = evaluate(model, samples, perturbation)
    m = run.metrics
    print(f"images {m['n_images']} ({m['n_good']} good, {m['n_anomalous']} anomalous), "
          f"threshold {m['threshold']:.3f}")
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1",
                "image_f1_at_threshold", "image_balanced_accuracy", "image_accuracy_at_threshold"):
        print(f"  {key:28s} {_metric(m.get(key))}")
    for defect, value in (m.get("per_type_image_auroc") or {}).items():
        print(f"  {f'image_auroc[{defect}]':28s} {_metric(value)}")
    for note in m.get("notes", []):
        print(f"  note: {note}")
    if args.json:
        write_text_atomic(args.json, json.dumps(m, indent=2) + "\n")
    if args.figure:
        report_figure(run, args.figure)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from padim.benchmark import BenchmarkOptions, run_benchmark

    opts = BenchmarkOptions(
        root=args.root, out=args.out, categories=args.categories,
        backbones=args.backbones or [DEFAULT_BACKBONE], size=args.size, crop=args.crop,
        channels=args.channels, seed=args.seed, weights=args.weights, storage=args.storage,
        score_mode=args.score_mode, shrinkage=args.shrinkage,
        batch_size=args.batch_size, device=args.device, perturb=args.perturb,
        compare_published=args.compare_published, keep_models=args.keep_models,
        figures=not args.no_figures, progress=_progress(args),
        command="padim " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else "",
    )
    results = run_benchmark(opts)
    print(f"benchmarked {len(results)} runs; wrote {args.out / 'tables.md'}, results.json, "
          f"results.csv" + ("" if args.no_figures else " and figures/"))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    model = _load(args)
    model.progress = _progress(args)
    if args.threshold is not None:
        if args.data is not None or args.good or args.defective:
            raise PadimError("give either --threshold or labelled data, not both")
        model.set_threshold(args.threshold)
    else:
        samples = _labelled_samples(args)
        scores, _ = model.score([s.path for s in samples])
        import numpy as np

        model.calibrate(scores, np.array([s.label for s in samples]))
    out = args.out or args.model
    model.save(out)
    print(f"threshold {model.threshold:.4f} ({model.info['threshold_source']}); wrote {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from padim.serve import MB, ServeSettings, run_server

    if args.max_upload_mb <= 0 or args.max_wait_ms < 0:
        raise PadimError("--max-upload-mb must be positive and --max-wait-ms non-negative")
    upload = int(args.max_upload_mb * MB)
    settings = ServeSettings(
        max_upload_bytes=upload, max_request_bytes=max(upload * 5, upload + MB),
        max_batch_images=args.max_batch_images, max_pixels=args.max_pixels,
        batching=not args.no_batching, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        examples=tuple(args.examples),
    )
    run_server(args.model, settings, host=args.host, port=args.port, workers=args.workers,
               device=args.device, log_level=args.log_level, threads=args.threads)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import numpy as np

    from padim.export import export_onnx, export_openvino, parity
    from padim.model import Padim
    from padim.runtime import file_id, load_scorer

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    want = ".onnx" if args.format == "onnx" else ".xml"
    if args.out.suffix.lower() != want:
        raise PadimError(f"--format {args.format} writes a {want} file: got --out {args.out}")
    model = Padim.load(args.model, device="cpu")
    if args.verify:
        from padim.bulk import source_paths
        from padim.images import read_image

        paths = source_paths(args.verify, recursive=False)[:16]
        check = np.stack([model.preprocess.image(read_image(p)).numpy() for p in paths])
    else:
        size = model.preprocess.output_size
        check = np.random.default_rng(0).random((4, 3, size, size), dtype=np.float32)
    onnx_out = args.out if args.format == "onnx" else args.out.with_suffix(".onnx.tmp")
    try:
        export_onnx(model, onnx_out, model_id=file_id(args.model), opset=args.opset,
                    external_data=args.external_data or None)
        if args.format == "openvino":
            export_openvino(onnx_out, args.out, fp16=args.fp16)
    finally:
        if args.format == "openvino":
            onnx_out.unlink(missing_ok=True)
            onnx_out.with_name(onnx_out.name + ".data").unlink(missing_ok=True)
    diff = parity(model, load_scorer(args.out, threads=args.threads), check)
    tolerance = args.tolerance * (100 if args.fp16 else 1)
    if diff["max_rel_score_diff"] > tolerance:
        raise PadimError(f"exported model disagrees with the torch model: relative score "
                         f"difference {diff['max_rel_score_diff']:.2e} > {tolerance:g} "
                         f"(left in {args.out} for inspection)")
    print(f"exported {args.out} ({args.format}); on {len(check)} "
          f"{'given' if args.verify else 'random'} images: max relative score difference "
          f"{diff['max_rel_score_diff']:.2e}, map {diff['max_rel_map_diff']:.2e}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    suffix = args.model.suffix.lower()
    if suffix in (".onnx", ".xml"):
        from padim.runtime import load_scorer

        print(json.dumps(load_scorer(args.model).describe(), indent=2))
        return 0
    from padim.modelfile import read_model_config

    print(json.dumps(read_model_config(args.model), indent=2))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from padim.backbones import available_backbones, get_backbone

    for name in available_backbones():
        spec = get_backbone(name)
        print(f"{name:18s} channels {spec.total_channels:4d} (keep {spec.default_keep:3d})  "
              f"{'offline' if spec.offline else 'download'}  {spec.weights_source}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from padim.demo import run_demo

    report = run_demo(args.out, texture=args.texture, device=args.device,
                      batch_size=args.batch_size, progress=_progress(args))
    print(f"demo report: {report}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from padim.download import LICENSE_NOTE, download_mvtec

    print(LICENSE_NOTE, file=sys.stderr)
    paths = download_mvtec(args.root, args.category)
    print(f"MVTec AD ready: {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _apply_runtime(args)
        return int(args.func(args) or 0)
    except PadimError as exc:
        print(f"padim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("padim: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("padim: error: out of memory; try a smaller --batch-size, --size or --channels",
              file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions, ... on output paths
        print(f"padim: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
