"""Append-only results log (`reports/results.csv`) and the comparison table built from it."""

import csv
import io
import logging
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULTS_PATH = PROJECT_ROOT / "reports" / "results.csv"
TIMINGS_DIR = PROJECT_ROOT / "reports" / "timings"

COLUMNS = [
    "run_id", "timestamp", "git_commit", "step", "model", "variant", "device", "device_name",
    "precision", "memory_format", "compile_mode", "batch_size", "tta", "accuracy",
    "latency_mean_ms", "latency_std_ms", "latency_min_ms", "latency_p50_ms", "latency_p90_ms",
    "latency_p95_ms", "latency_p99_ms", "latency_max_ms", "warmup_iters", "measure_iters", "threads",
    "params", "size_bytes", "dataset_sha256", "seed", "torch_version", "torchvision_version",
    "cuda_version", "cudnn_version", "driver_version", "weights", "timings_file", "notes",
]

TABLE_COLUMNS = [
    "step", "model", "variant", "device", "device_name", "precision", "memory_format", "compile_mode", "tta",
    "threads", "accuracy", "latency_mean_ms", "latency_p95_ms", "latency_p99_ms", "measure_iters", "params",
    "size_bytes", "notes", "timestamp",
]
# Rows that agree on all of these measure the same variant; the table keeps the newest of them.
# The CPU or GPU name and the notes are part of it, so another machine's rows and quick checks
# (marked in their notes) stay beside the full runs instead of replacing them.
VARIANT_KEY = ["step", "model", "variant", "device", "device_name", "precision", "memory_format", "compile_mode",
               "tta", "threads", "measure_iters", "notes"]


def new_run_id():
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def save_timings(run_id, times_ms, directory=TIMINGS_DIR):
    """Keep the raw per-iteration times (ms) for distribution plots; returns the file path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run_id}.npy"
    np.save(path, np.asarray(times_ms, dtype=np.float32))
    return path


def check_header(path):
    """Raise ValueError unless the CSV at `path` starts with this version's results header."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if header != COLUMNS:
        raise ValueError(f"{path} has columns {header[:5]}{'...' if len(header) > 5 else ''}, not those of a results log; "
                         f"move it aside to start a new log, or pass another --results path")


def append_row(row, path=RESULTS_PATH):
    """Append one result row; earlier rows are never rewritten.

    The row is written as a single line with one write call and fsync'd, so a crash can at worst
    leave a partial last line, which `read_results` skips with a warning.
    """
    path = Path(path)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown result column(s) {sorted(unknown)}; add them to COLUMNS first")
    row = {"run_id": new_run_id(), "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), **row}

    path.parent.mkdir(parents=True, exist_ok=True)
    is_new = not path.exists() or path.stat().st_size == 0
    ends_mid_line = False
    if not is_new:
        check_header(path)
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            ends_mid_line = f.read(1) != b"\n"

    buffer = io.StringIO()
    if ends_mid_line:
        # An earlier write was interrupted: end that partial line so this row starts on its own.
        log.warning("%s ends with an incomplete row from an interrupted write; it will be skipped when read", path)
        buffer.write("\n")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if is_new:
        writer.writeheader()
    writer.writerow({key: row.get(key, "") for key in COLUMNS})
    with open(path, "a", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    log.info("Logged %s / %s on %s to %s", row.get("model"), row.get("variant"), row.get("device"), path)
    return row


def read_results(path=RESULTS_PATH):
    """Read the log as a DataFrame; an incomplete last line from an interrupted write is skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results log {path} not found; run `cifar10-latency benchmark` to create it")
    if path.stat().st_size:
        check_header(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = (rows[0], rows[1:]) if rows else (COLUMNS, [])
    complete = [row for row in body if len(row) == len(header)]
    if len(complete) < len(body):
        log.warning("%s: skipped %d incomplete row(s), left by an interrupted write", path, len(body) - len(complete))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header] + complete)
    buffer.seek(0)
    return pd.read_csv(buffer, dtype={"run_id": str, "git_commit": str, "dataset_sha256": str})


def results_table(path=RESULTS_PATH, latest_only=True):
    """Comparison table: one row per variant (see VARIANT_KEY), fastest p95 first within a step.

    With `latest_only`, a variant measured more than once keeps its newest row; the log itself
    keeps them all.
    """
    df = read_results(path)
    df["notes"] = df["notes"].astype(object).fillna("")
    # Older rows spell one thread "(1 threads)". Reading it as "(1 thread)" groups them with newer rows.
    df["device_name"] = df["device_name"].astype(str).str.replace("(1 threads)", "(1 thread)", regex=False)
    if latest_only and len(df):
        df = df.sort_values("timestamp", kind="stable").drop_duplicates(VARIANT_KEY, keep="last")
    return df[TABLE_COLUMNS].sort_values(["step", "latency_p95_ms"]).reset_index(drop=True)


def to_markdown(table):
    """Render a results table as Markdown: latencies in ms to 3 decimals, accuracy as a fraction to 4."""
    def cell(column, value):
        if isinstance(value, float) and column.startswith("latency_"):
            return f"{value:.3f}"
        if column == "accuracy" and isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row)) + " |")
    return "\n".join(lines)
