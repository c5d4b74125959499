"""Measure one variant of a trained model: test accuracy and batch-1 latency, logged as one result row."""

import logging

import torch

from .data import normalize
from .environment import environment_fingerprint
from .evaluate import evaluate
from .latency import DEFAULT_MEASURE_ITERS, DEFAULT_WARMUP_ITERS, measure_latency
from .models import count_parameters, weight_size_bytes
from .results import RESULTS_PATH, TIMINGS_DIR, append_row, new_run_id, save_timings

log = logging.getLogger(__name__)

# precision name -> (dtype of weights and inputs, autocast dtype)
PRECISIONS = {
    "fp32": (torch.float32, None),
    "fp16_autocast": (torch.float32, torch.float16),
    "bf16_autocast": (torch.float32, torch.bfloat16),
    "fp16": (torch.float16, None),
    "bf16": (torch.bfloat16, None),
}


def prepare_variant(model, precision="fp32", channels_last=False):
    """Cast `model` for a precision and memory format; returns (model, input dtype, autocast dtype)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is invalid; use one of {', '.join(PRECISIONS)}")
    input_dtype, amp_dtype = PRECISIONS[precision]
    model = model.to(dtype=input_dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), input_dtype, amp_dtype


def benchmark(model, test_split, step, model_name, variant, precision="fp32", channels_last=False, tta=False,
              warmup_iters=DEFAULT_WARMUP_ITERS, measure_iters=DEFAULT_MEASURE_ITERS, threads=None,
              compile_mode="none", seed="", weights="", notes="", results_path=RESULTS_PATH, timings_dir=TIMINGS_DIR,
              progress=True):
    """Re-measure accuracy under the variant, time it at batch 1 and append a row to the results log.

    `model` must already sit on the test split's device (and be compiled, when `compile_mode` is not "none").
    Returns the logged row.
    """
    if warmup_iters < 0 or measure_iters < 1:
        raise ValueError(f"warmup_iters={warmup_iters} and measure_iters={measure_iters}: need warmup_iters >= 0 and measure_iters >= 1")
    device = test_split.images.device
    if device.type == "cpu" and precision != "fp32" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("%s on a CPU without AVX512-BF16 or AMX runs emulated and is usually much slower than fp32", precision)
    if threads is not None:
        torch.set_num_threads(threads)
    model, input_dtype, amp_dtype = prepare_variant(model, precision, channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    report = evaluate(model, test_split, tta=tta, amp_dtype=amp_dtype, channels_last=channels_last, input_dtype=input_dtype)
    inputs = normalize(test_split.images, dtype=input_dtype, memory_format=memory_format)
    result = measure_latency(model, inputs, warmup_iters, measure_iters, amp_dtype=amp_dtype, tta=tta, progress=progress)

    run_id = new_run_id()
    environment = environment_fingerprint(device)
    row = {
        "run_id": run_id,
        "step": step,
        "model": model_name,
        "variant": variant,
        "precision": precision,
        "memory_format": "channels_last" if channels_last else "nchw",
        "compile_mode": compile_mode,
        "batch_size": 1,
        "tta": tta,
        "accuracy": round(report["accuracy"], 6),
        **{key: round(value, 6) for key, value in result.stats().items()},
        "warmup_iters": warmup_iters,
        "measure_iters": measure_iters,
        "threads": result.threads,
        "params": count_parameters(model),
        "size_bytes": weight_size_bytes(model),
        "dataset_sha256": test_split.sha256,
        "seed": seed,
        "weights": weights,
        "timings_file": f"{run_id}.npy",
        "notes": notes,
        **{key: environment[key] for key in ("git_commit", "device", "device_name", "torch_version",
                                             "torchvision_version", "cuda_version", "cudnn_version", "driver_version")},
    }
    if report["count"] != 10_000:
        row["notes"] = (notes + "; " if notes else "") + f"accuracy over {report['count']} test images only"
    timings_path = save_timings(run_id, result.times_ms, timings_dir)
    try:
        return append_row(row, results_path)
    except (OSError, ValueError):
        # Without its row the timings file would be an orphan.
        timings_path.unlink(missing_ok=True)
        raise
