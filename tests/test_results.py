import csv

import numpy as np
import pytest

from cifar10_latency.results import COLUMNS, TABLE_COLUMNS, append_row, read_results, results_table, save_timings, to_markdown


def result_row(variant="fp32", p95=1.0, step="s1", **extra):
    return {"step": step, "model": "plain_cnn", "variant": variant, "device": "cpu", "tta": False,
            "accuracy": 0.9, "latency_mean_ms": p95 / 2, "latency_p95_ms": p95, "latency_p99_ms": p95 * 2,
            "params": 1000, "size_bytes": 4000, **extra}


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# Appending


def test_append_creates_header_and_row(tmp_path):
    path = tmp_path / "logs" / "results.csv"

    row = append_row(result_row(), path)

    rows = read_rows(path)
    assert rows[0] == COLUMNS
    assert len(rows) == 2
    assert rows[1][COLUMNS.index("variant")] == "fp32"
    assert rows[1][COLUMNS.index("run_id")] == row["run_id"]


def test_append_fills_run_id_timestamp(tmp_path):
    row = append_row(result_row(), tmp_path / "results.csv")

    assert row["run_id"]
    assert row["timestamp"]


def test_append_keeps_earlier_bytes(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a"), path)
    first = path.read_bytes()

    append_row(result_row("b"), path)
    append_row(result_row("c"), path)

    content = path.read_bytes()
    assert content.startswith(first)
    assert len(read_rows(path)) == 4
    assert content.count(b"run_id,") == 1


def test_append_unknown_column(tmp_path):
    path = tmp_path / "results.csv"

    with pytest.raises(ValueError) as error:
        append_row(result_row(speedup=2.0), path)

    assert "speedup" in str(error.value)
    assert not path.exists()


def test_append_unknown_column_existing(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row(), path)
    before = path.read_bytes()

    with pytest.raises(ValueError):
        append_row(result_row(speedup=2.0), path)

    assert path.read_bytes() == before


def test_append_other_header_rejected(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("run_id,model,latency_ms\nabc,plain_cnn,1.5\n")
    before = path.read_bytes()

    with pytest.raises(ValueError) as error:
        append_row(result_row(), path)

    assert str(path) in str(error.value)
    assert path.read_bytes() == before


def test_append_to_empty_file(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("")

    append_row(result_row(), path)

    assert read_rows(path)[0] == COLUMNS


def test_append_after_partial_line(tmp_path):
    # A crash mid-write leaves a last line without its newline. The next row must still be readable.
    path = tmp_path / "results.csv"
    append_row(result_row("a"), path)
    with open(path, "a") as f:
        f.write("20260101T000000-abcdef,2026-01-01T00:00:00")
    row = append_row(result_row("b"), path)

    df = read_results(path)

    assert row["run_id"] in df["run_id"].tolist()


# Reading


def test_read_results_values(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a", p95=1.5), path)
    append_row(result_row("b", p95=2.5), path)

    df = read_results(path)

    assert list(df.columns) == COLUMNS
    assert df["variant"].tolist() == ["a", "b"]
    assert df["latency_p95_ms"].tolist() == [1.5, 2.5]


def test_read_skips_truncated_line(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a"), path)
    append_row(result_row("b"), path)
    content = path.read_bytes()
    path.write_bytes(content[:-40])

    df = read_results(path)

    assert df["variant"].tolist() == ["a"]


def test_read_missing_log(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        read_results(tmp_path / "absent.csv")

    assert "absent.csv" in str(error.value)


# Comparison table


def test_table_columns(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a"), path)

    table = results_table(path)

    assert list(table.columns) == TABLE_COLUMNS


def test_table_keeps_latest_variant(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a", p95=5.0, timestamp="2026-01-01T10:00:00+00:00"), path)
    append_row(result_row("b", p95=3.0, timestamp="2026-01-01T10:00:01+00:00"), path)
    append_row(result_row("a", p95=4.0, timestamp="2026-01-01T10:00:02+00:00"), path)

    table = results_table(path)

    assert len(table) == 2
    assert table.loc[table["variant"] == "a", "latency_p95_ms"].tolist() == [4.0]


def test_table_keeps_each_machine(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a", p95=5.0, device_name="AMD EPYC (2 threads)"), path)
    append_row(result_row("a", p95=1.0, device_name="Intel Xeon (2 threads)"), path)

    table = results_table(path)

    assert sorted(table["device_name"]) == ["AMD EPYC (2 threads)", "Intel Xeon (2 threads)"]


def test_table_old_thread_spelling_grouped(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a", p95=5.0, device_name="AMD EPYC (1 threads)"), path)
    append_row(result_row("a", p95=4.0, device_name="AMD EPYC (1 thread)"), path)

    table = results_table(path)

    assert table["latency_p95_ms"].tolist() == [4.0]


def test_table_quick_check_kept_apart(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a", p95=5.0, measure_iters=1000), path)
    append_row(result_row("a", p95=1.0, measure_iters=20, notes="test_limit=100"), path)

    table = results_table(path)

    assert len(table) == 2
    assert table.loc[table["notes"] == "", "measure_iters"].tolist() == [1000]


def test_table_all_rows(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a", p95=5.0), path)
    append_row(result_row("a", p95=4.0), path)

    table = results_table(path, latest_only=False)

    assert len(table) == 2


def test_table_sorted_by_p95(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("slow", p95=9.0, step="s2"), path)
    append_row(result_row("fast", p95=1.0, step="s2"), path)
    append_row(result_row("mid", p95=5.0, step="s1"), path)

    table = results_table(path)

    assert table["variant"].tolist() == ["mid", "fast", "slow"]


def test_table_same_second_latest(tmp_path):
    # Timestamps have one-second resolution, so a quick sweep logs rows that tie on them.
    # The row appended last must still win.
    path = tmp_path / "results.csv"
    stamp = "2026-01-01T10:00:00+00:00"
    for index in range(30):
        append_row(result_row("x", p95=float(index), timestamp=stamp), path)
    for index in range(10):
        append_row(result_row(f"other{index}", p95=100.0, timestamp=stamp), path)

    table = results_table(path)

    assert table.loc[table["variant"] == "x", "latency_p95_ms"].tolist() == [29.0]


# Raw timings


def test_save_timings_npy(tmp_path):
    times = [1.25, 2.5, 3.75]

    path = save_timings("run-1", times, tmp_path / "timings")

    assert path == tmp_path / "timings" / "run-1.npy"
    loaded = np.load(path)
    assert loaded.dtype == np.float32
    assert loaded.tolist() == times


# Markdown rendering


def test_markdown_header_and_rows(tmp_path):
    path = tmp_path / "results.csv"
    append_row(result_row("a", p95=1.23456), path)
    append_row(result_row("b", p95=2.0), path)

    lines = to_markdown(results_table(path)).splitlines()

    assert lines[0] == "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert len(lines) == 4
    assert "| 1.235 |" in lines[2]
    assert "| 0.9000 |" in lines[2]
