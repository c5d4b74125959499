import statistics

import numpy as np
import pytest
import torch

from cifar10_latency.data import normalize
from cifar10_latency.latency import latency_stats, measure_latency


def test_stats_known_series():
    times = np.arange(1, 101, dtype=np.float64)

    stats = latency_stats(times)

    # NumPy's default (linear) percentile of 1..100 is 1 + q/100 * 99.
    assert stats["latency_mean_ms"] == pytest.approx(50.5)
    assert stats["latency_min_ms"] == 1.0
    assert stats["latency_max_ms"] == 100.0
    assert stats["latency_p50_ms"] == pytest.approx(50.5)
    assert stats["latency_p90_ms"] == pytest.approx(90.1)
    assert stats["latency_p95_ms"] == pytest.approx(95.05)
    assert stats["latency_p99_ms"] == pytest.approx(99.01)
    assert stats["latency_std_ms"] == pytest.approx(statistics.stdev(range(1, 101)))


def test_stats_order_independent():
    times = np.arange(1, 101, dtype=np.float64)
    shuffled = np.random.default_rng(0).permutation(times)

    assert latency_stats(shuffled) == latency_stats(times)


def test_stats_single_sample():
    stats = latency_stats([2.5])

    assert stats["latency_std_ms"] == 0.0
    assert stats["latency_p99_ms"] == 2.5


def test_stats_empty_raises():
    with pytest.raises(ValueError):
        latency_stats([])


@pytest.fixture
def inputs(test_split):
    return normalize(test_split.images[:8])


def test_measure_returns_timings(tiny_model, inputs):
    result = measure_latency(tiny_model, inputs, warmup_iters=3, measure_iters=12, progress=False)

    assert result.times_ms.shape == (12,)
    assert (result.times_ms > 0).all()
    assert result.warmup_iters == 3
    assert result.measure_iters == 12


def test_measure_records_threads(tiny_model, inputs):
    result = measure_latency(tiny_model, inputs, warmup_iters=0, measure_iters=2, threads=1, progress=False)

    assert result.threads == 1
    assert torch.get_num_threads() == 1


def test_measure_default_threads(tiny_model, inputs):
    result = measure_latency(tiny_model, inputs, warmup_iters=0, measure_iters=2, progress=False)

    assert result.threads == torch.get_num_threads()


def test_measure_cycles_inputs(tiny_model, inputs):
    # More iterations than images: the loop reuses the prepared inputs.
    result = measure_latency(tiny_model, inputs[:2], warmup_iters=1, measure_iters=5, tta=True, progress=False)

    assert len(result.times_ms) == 5


def test_measure_stats_consistent(tiny_model, inputs):
    result = measure_latency(tiny_model, inputs, warmup_iters=1, measure_iters=6, progress=False)

    stats = result.stats()

    assert stats["latency_min_ms"] == pytest.approx(result.times_ms.min())
    assert stats["latency_max_ms"] == pytest.approx(result.times_ms.max())


def test_measure_sets_eval_mode(tiny_model, inputs):
    tiny_model.train()

    measure_latency(tiny_model, inputs, warmup_iters=0, measure_iters=1, progress=False)

    assert not tiny_model.training


@pytest.mark.parametrize("warmup, measure", [(-1, 5), (0, 0), (2, -3)])
def test_measure_bad_iterations(tiny_model, inputs, warmup, measure):
    with pytest.raises(ValueError) as error:
        measure_latency(tiny_model, inputs, warmup_iters=warmup, measure_iters=measure, progress=False)

    assert "measure_iters" in str(error.value)
