"""Batch-1 latency protocol: eval mode, inference_mode, warm-up, many timed iterations."""

import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

DEFAULT_WARMUP_ITERS = 100
DEFAULT_MEASURE_ITERS = 1000


@dataclass
class LatencyResult:
    times_ms: np.ndarray  # one entry per measured iteration
    warmup_iters: int
    measure_iters: int
    threads: int  # torch intra-op threads during the run (CPU); recorded on CUDA too

    def stats(self):
        return latency_stats(self.times_ms)


def latency_stats(times_ms):
    """Mean, std, min, p50, p90, p95, p99 and max of a series of per-iteration times, in ms."""
    times = np.asarray(times_ms, dtype=np.float64)
    if times.size == 0:
        raise ValueError("no latency samples: measure_iters must be at least 1")
    p50, p90, p95, p99 = np.percentile(times, [50, 90, 95, 99])
    return {
        "latency_mean_ms": float(times.mean()),
        "latency_std_ms": float(times.std(ddof=1)) if times.size > 1 else 0.0,
        "latency_min_ms": float(times.min()),
        "latency_p50_ms": float(p50),
        "latency_p90_ms": float(p90),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
        "latency_max_ms": float(times.max()),
    }


def measure_latency(model, inputs, warmup_iters=DEFAULT_WARMUP_ITERS, measure_iters=DEFAULT_MEASURE_ITERS,
                    amp_dtype=None, tta=False, threads=None, progress=True):
    """Time `model` on one image at a time, cycling through the prepared `inputs` (N, 3, 32, 32).

    `inputs` must already be normalised and in the dtype and memory format under test, on the
    model's device, so the timed region contains only the forward pass (two with `tta`). On CUDA each
    iteration is bracketed by a CUDA event pair and the device is synchronised before any reading.
    On CPU `time.perf_counter_ns` brackets each call, with `threads` intra-op threads.
    """
    if warmup_iters < 0 or measure_iters < 1:
        raise ValueError(f"warmup_iters={warmup_iters} and measure_iters={measure_iters}: need warmup_iters >= 0 and measure_iters >= 1")
    device = inputs.device
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    model.eval()

    # Pre-slice the batch-1 views so the timed loop does no indexing work.
    samples = [inputs[i:i + 1] for i in range(min(len(inputs), warmup_iters + measure_iters))]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    def forward(x):
        with autocast:
            out = model(x)
            if tta:
                out = out + model(x.flip(-1))
        return out

    times_ms = np.empty(measure_iters)
    with torch.inference_mode():
        for i in tqdm(range(warmup_iters), desc="warm-up", leave=False, disable=not progress):
            forward(samples[i % len(samples)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(measure_iters)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(measure_iters)]
            for i in tqdm(range(measure_iters), desc="timing", leave=False, disable=not progress):
                x = samples[i % len(samples)]
                starts[i].record()
                forward(x)
                ends[i].record()
                # Waiting per iteration keeps iterations from overlapping, as one request at a time would.
                ends[i].synchronize()
            torch.cuda.synchronize(device)
            times_ms[:] = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        else:
            for i in tqdm(range(measure_iters), desc="timing", leave=False, disable=not progress):
                x = samples[i % len(samples)]
                start = time.perf_counter_ns()
                forward(x)
                times_ms[i] = (time.perf_counter_ns() - start) / 1e6

    torch.set_num_threads(previous_threads)
    result = LatencyResult(times_ms, warmup_iters, measure_iters, threads)
    stats = result.stats()
    log.info("latency on %s (%d threads): mean %.3f ms, p95 %.3f ms over %d iterations",
             device, threads, stats["latency_mean_ms"], stats["latency_p95_ms"], measure_iters)
    return result
