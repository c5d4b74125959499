import numpy as np
import pytest
import torch

from cifar10_latency.benchmark import PRECISIONS, benchmark, prepare_variant
from cifar10_latency.models import count_parameters
from cifar10_latency.results import read_results

LATENCY_COLUMNS = [
    "latency_mean_ms", "latency_std_ms", "latency_min_ms", "latency_p50_ms", "latency_p90_ms",
    "latency_p95_ms", "latency_p99_ms", "latency_max_ms",
]


def run_benchmark(model, split, tmp_path, **kwargs):
    return benchmark(model, split, step="pytest", model_name="plain_cnn", variant=kwargs.pop("variant", "fp32"),
                     warmup_iters=2, measure_iters=5, results_path=tmp_path / "results.csv",
                     timings_dir=tmp_path / "timings", progress=False, **kwargs)


def test_benchmark_appends_one_row(tiny_model, test_split, tmp_path):
    run_benchmark(tiny_model, test_split, tmp_path)

    df = read_results(tmp_path / "results.csv")

    assert len(df) == 1


def test_benchmark_fills_latency_columns(tiny_model, test_split, tmp_path):
    run_benchmark(tiny_model, test_split, tmp_path)

    row = read_results(tmp_path / "results.csv").iloc[0]

    for column in LATENCY_COLUMNS:
        assert row[column] > 0, column
    assert row["latency_min_ms"] <= row["latency_p50_ms"] <= row["latency_max_ms"]


def test_benchmark_records_protocol(tiny_model, test_split, tmp_path):
    params = count_parameters(tiny_model)

    run_benchmark(tiny_model, test_split, tmp_path)

    row = read_results(tmp_path / "results.csv").iloc[0]
    assert row["warmup_iters"] == 2
    assert row["measure_iters"] == 5
    assert row["batch_size"] == 1
    assert row["threads"] == torch.get_num_threads()
    assert row["params"] == params
    assert row["dataset_sha256"] == test_split.sha256
    assert row["device"] == "cpu"
    assert row["precision"] == "fp32"
    assert row["memory_format"] == "nchw"
    assert 0.0 <= row["accuracy"] <= 1.0


def test_benchmark_notes_partial_test_set(tiny_model, test_split, tmp_path):
    run_benchmark(tiny_model, test_split, tmp_path, notes="quick")

    row = read_results(tmp_path / "results.csv").iloc[0]

    assert row["notes"].startswith("quick; ")
    assert f"{len(test_split)} test images" in row["notes"]


def test_benchmark_writes_timings(tiny_model, test_split, tmp_path):
    row = run_benchmark(tiny_model, test_split, tmp_path)

    path = tmp_path / "timings" / row["timings_file"]

    assert path.is_file()
    assert path.name == f"{row['run_id']}.npy"
    timings = np.load(path)
    assert timings.shape == (5,)
    assert (timings > 0).all()
    assert float(timings.max()) == pytest.approx(row["latency_max_ms"], rel=1e-4)


def test_benchmark_second_row(tiny_model, test_split, tmp_path):
    run_benchmark(tiny_model, test_split, tmp_path)
    run_benchmark(tiny_model, test_split, tmp_path, variant="cl", channels_last=True, tta=True)

    df = read_results(tmp_path / "results.csv")

    assert df["variant"].tolist() == ["fp32", "cl"]
    assert df["memory_format"].tolist() == ["nchw", "channels_last"]
    assert df["tta"].tolist() == [False, True]
    assert len(list((tmp_path / "timings").iterdir())) == 2


def test_benchmark_bf16_weights(tiny_model, test_split, tmp_path):
    row = run_benchmark(tiny_model, test_split, tmp_path, precision="bf16", variant="bf16")

    assert row["precision"] == "bf16"
    assert row["size_bytes"] < 4 * count_parameters(tiny_model)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_prepare_variant_dtypes(tiny_model, precision):
    model, input_dtype, amp_dtype = prepare_variant(tiny_model, precision)

    assert next(model.parameters()).dtype == input_dtype
    assert (input_dtype, amp_dtype) == PRECISIONS[precision]
    assert not model.training


def test_prepare_variant_channels_last(tiny_model):
    model, _, _ = prepare_variant(tiny_model, "fp32", channels_last=True)

    conv = model.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_prepare_variant_bad_precision(tiny_model):
    with pytest.raises(ValueError) as error:
        prepare_variant(tiny_model, "int8")

    assert "int8" in str(error.value)
