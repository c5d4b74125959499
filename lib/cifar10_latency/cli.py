"""Command line: `cifar10-latency train | evaluate | benchmark | table`."""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from .benchmark import PRECISIONS, benchmark
from .data import CLASSES, TRAIN_IMAGES, DatasetError, load_test
from .environment import resolve_device
from .evaluate import evaluate
from .experiment import PROJECT_ROOT, checkpoint_path_for, fit
from .latency import DEFAULT_MEASURE_ITERS, DEFAULT_WARMUP_ITERS
from .params import load_params, model_entry
from .results import RESULTS_PATH, check_header, results_table, to_markdown
from .train import TrainConfig
from .weights import WeightsError, load_weights

log = logging.getLogger("cifar10_latency")

# Folder for the weights of a `train` run on part of the data when no --weights path is given.
QUICK_WEIGHTS_DIR = PROJECT_ROOT / "runs" / "quick"


def _whole_number(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive_int(text):
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative_int(text):
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _add_data_options(parser, device_default="auto"):
    parser.add_argument("--data-root", help="folder that contains cifar-10-batches-py/ (default: $CIFAR10_ROOT, data/, ../shared/cifar10)")
    parser.add_argument("--device", default=device_default,
                        help="cpu, cuda, cuda:N or auto (CUDA when available); default: " + (device_default or "the params file's, else auto"))
    parser.add_argument("--test-limit", type=_positive_int, help="use only the first N test images (quick checks)")


def _set_threads(threads):
    # A fixed intra-op thread count makes CPU timings comparable between runs; it is logged with each row.
    if threads:
        torch.set_num_threads(threads)
    cores = os.cpu_count()
    if cores and torch.get_num_threads() > cores:
        log.warning("%d threads on %d CPU cores: threads will wait for each other and timings will suffer; "
                    "use --threads %d or fewer", torch.get_num_threads(), cores, cores)
    log.info("torch uses %d intra-op threads", torch.get_num_threads())


def cmd_train(args):
    params = load_params(args.params)
    _set_threads(args.threads or params.get("threads"))
    arch, model_config, train_config, weights = model_entry(params, args.model)
    for key in ("epochs", "seed", "batch_size", "time_budget_s"):
        if getattr(args, key) is not None:
            train_config[key] = getattr(args, key)
    try:
        train_config = TrainConfig.from_dict(train_config)
    except ValueError as error:
        raise ValueError(f"params {args.params}, entry {args.model!r} (with its command-line overrides): {error}") from None
    if args.weights:
        weights = Path(args.weights)
    elif args.train_limit or args.test_limit:
        # A quick check must not replace the entry's real weights, so it writes under runs/ unless --weights is given.
        weights = QUICK_WEIGHTS_DIR / f"{args.model}.safetensors"
        log.info("Quick check (--train-limit or --test-limit): weights go to %s, not to the entry's path", weights)
    checkpoint = checkpoint_path_for(weights)
    _, info = fit(arch, model_config, train_config, weights, data_root=args.data_root or params.get("data_root"),
                  device=args.device or params.get("device", "auto"), checkpoint_path=checkpoint, resume=not args.no_resume,
                  train_limit=args.train_limit, test_limit=args.test_limit)
    print(f"{args.model}: accuracy {info['accuracy']:.4f} (with flip averaging {info['accuracy_tta']:.4f}), "
          f"{info['train_seconds']:.0f} s of training, {info['params']:,} parameters -> {weights}")


def cmd_evaluate(args):
    device = resolve_device(args.device)
    model, info = load_weights(args.weights, device)
    test = load_test(args.data_root, device, limit=args.test_limit)
    report = evaluate(model, test, tta=args.tta)
    if args.json:
        # A class absent from a limited test set has accuracy NaN, which JSON cannot hold: write null.
        report["per_class"] = [None if value != value else value for value in report["per_class"]]
        print(json.dumps(report, indent=2))
        return
    print(f"{info['model']} on {report['count']} test images, flip averaging {'on' if args.tta else 'off'}: accuracy {report['accuracy']:.4f}")
    for name, value in zip(CLASSES, report["per_class"]):
        print(f"  {name:<11} {value:.4f}")


def cmd_benchmark(args):
    # Check the log before the minutes of measuring, so a bad path cannot waste them.
    if args.results.is_dir():
        raise ValueError(f"--results {args.results} is a folder; give a .csv file path")
    if args.results.is_file():
        check_header(args.results)
    _set_threads(args.threads)
    device = resolve_device(args.device)
    model, info = load_weights(args.weights, device)
    test = load_test(args.data_root, device, limit=args.test_limit)
    notes = ""
    if info.get("train_images") and info["train_images"] < TRAIN_IMAGES:
        # Weights from a quick check must not pass for a real run in the table.
        notes = f"weights trained on {info['train_images']} images only"
    variant = args.variant or "_".join([args.precision] + ["channels_last"] * args.channels_last + ["tta"] * args.tta)
    row = benchmark(model, test, step=args.step, model_name=info["model"], variant=variant,
                    precision=args.precision, channels_last=args.channels_last, tta=args.tta,
                    warmup_iters=args.warmup_iters, measure_iters=args.measure_iters,
                    seed=info.get("seed", ""), weights=str(args.weights), notes=notes, results_path=args.results,
                    timings_dir=args.results.parent / "timings")
    print(f"{row['model']} [{row['variant']}] on {row['device_name']}: accuracy {row['accuracy']:.4f}, "
          f"mean {row['latency_mean_ms']:.3f} ms, p95 {row['latency_p95_ms']:.3f} ms, p99 {row['latency_p99_ms']:.3f} ms "
          f"-> {args.results}")


def cmd_table(args):
    import pandas as pd

    table = results_table(args.results, latest_only=not args.all)
    if args.markdown:
        print(to_markdown(table))
        return
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(table.drop(columns=["timestamp"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def build_parser():
    parser = argparse.ArgumentParser(prog="cifar10-latency", description="Train CIFAR-10 models, evaluate them and time them at batch 1.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from scratch and save safetensors weights")
    train.add_argument("model", help="an entry under 'models' in the params file, e.g. plain_cnn")
    train.add_argument("--params", default="cpu", help="profile name in params/ or a YAML path (default: cpu)")
    train.add_argument("--weights", help="output .safetensors path (default: the entry's, else weights/<model>.safetensors; "
                            "runs/quick/<model>.safetensors with --train-limit or --test-limit)")
    train.add_argument("--epochs", type=_positive_int, help="override the entry's number of epochs")
    train.add_argument("--batch-size", type=_positive_int, help="override the entry's batch size")
    train.add_argument("--seed", type=int, help="override the entry's seed")
    train.add_argument("--time-budget", dest="time_budget_s", type=float,
                       help="override the entry's training budget in seconds (0: train for all epochs)")
    train.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: the profile's, else torch's)")
    train.add_argument("--train-limit", type=_positive_int, help="use only the first N training images (quick checks)")
    train.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start afresh")
    _add_data_options(train, device_default=None)
    train.set_defaults(run=cmd_train)

    evaluate_parser = commands.add_parser("evaluate", help="test-set accuracy, overall and per class")
    evaluate_parser.add_argument("weights", type=Path, help="a .safetensors file with its .json sidecar")
    evaluate_parser.add_argument("--tta", action="store_true", help="average the logits of each image and its mirror")
    evaluate_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_data_options(evaluate_parser)
    evaluate_parser.set_defaults(run=cmd_evaluate)

    bench = commands.add_parser("benchmark", help="accuracy and batch-1 latency of one variant, appended to the results log")
    bench.add_argument("weights", type=Path, help="a .safetensors file with its .json sidecar")
    bench.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="weights/input dtype or autocast (default: fp32)")
    bench.add_argument("--channels-last", action="store_true", help="run in the channels_last memory format")
    bench.add_argument("--tta", action="store_true", help="time and score with flip averaging (two forward passes)")
    bench.add_argument("--warmup-iters", type=_non_negative_int, default=DEFAULT_WARMUP_ITERS, help=f"untimed iterations first (default: {DEFAULT_WARMUP_ITERS})")
    bench.add_argument("--measure-iters", type=_positive_int, default=DEFAULT_MEASURE_ITERS, help=f"timed iterations (default: {DEFAULT_MEASURE_ITERS})")
    bench.add_argument("--threads", type=_positive_int, help="torch intra-op threads for CPU timing (default: torch's, logged)")
    bench.add_argument("--step", default="cli", help="step label in the log, e.g. 01_baseline_speed (default: cli)")
    bench.add_argument("--variant", help="variant label in the log (default: precision, plus _channels_last and _tta when set)")
    bench.add_argument("--results", type=Path, default=RESULTS_PATH, help=f"results log (default: {RESULTS_PATH.relative_to(PROJECT_ROOT)})")
    _add_data_options(bench)
    bench.set_defaults(run=cmd_benchmark)

    table = commands.add_parser("table", help="print the comparison table from the results log")
    table.add_argument("--results", type=Path, default=RESULTS_PATH, help=f"results log to read (default: {RESULTS_PATH.relative_to(PROJECT_ROOT)})")
    table.add_argument("--all", action="store_true", help="keep every row, not only the newest per variant")
    table.add_argument("--markdown", action="store_true", help="print a Markdown table (for reports)")
    table.set_defaults(run=cmd_table)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.run(args)
    except (DatasetError, WeightsError, ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same train command to resume from the last epoch checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
