import json
import shutil
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from cifar10_latency import benchmark as benchmark_module
from cifar10_latency import cli
from cifar10_latency.experiment import checkpoint_path_for
from cifar10_latency.results import COLUMNS, read_results, save_timings
from cifar10_latency.weights import sidecar_path

from conftest import PROJECT_ROOT, TEST_COUNT, TINY_CONFIG

TINY_ENTRY = {
    "arch": "plain_cnn",
    "config": TINY_CONFIG,
    "train": {"epochs": 1, "batch_size": 32, "amp": "off", "lr": 0.05},
}


def write_params(path, **entries):
    path.write_text(yaml.safe_dump({"threads": 1, "models": entries or {"tiny": TINY_ENTRY}}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_str):
    """Weights written once by `train`, shared by the evaluate and benchmark tests (read only)."""
    folder = tmp_path_factory.mktemp("cli")
    stem = f"pytest-{uuid.uuid4().hex[:10]}"
    weights = folder / f"{stem}.safetensors"
    params = write_params(folder / "params.yaml")
    checkpoint = checkpoint_path_for(weights)
    argv = ["train", "tiny", "--params", str(params), "--weights", str(weights),
            "--data-root", str(cifar_str.root), "--device", "cpu"]

    code = cli.main(argv)
    checkpoint_left = checkpoint.is_file()
    checkpoint.unlink(missing_ok=True)
    return {"code": code, "weights": weights, "checkpoint_left": checkpoint_left, "root": cifar_str.root}


@pytest.fixture(autouse=True)
def timings_requests(monkeypatch, tmp_path):
    """Record the directory `benchmark` requests for raw timings, and save them under tmp_path instead.

    The CLI has no timings option, so without this the tests would write into reports/timings/.
    """
    requests = []

    def redirected(run_id, times_ms, directory):
        requests.append(Path(directory))
        return save_timings(run_id, times_ms, tmp_path / "redirected-timings")

    monkeypatch.setattr(benchmark_module, "save_timings", redirected)
    return requests


def run_cli(capsys, argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_without_data(capsys, tmp_path, entry_name, params, checkpoint_stem):
    """Run `train` on an empty data root: an error other than the missing data comes from a check made before loading."""
    empty = tmp_path / "empty-root"
    empty.mkdir()
    code, _, err = run_cli(capsys, ["train", entry_name, "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors",
                                    "--data-root", empty, "--device", "cpu"])
    return code, err, empty


def assert_clean_error(code, err):
    assert code == 2
    assert "error:" in err
    assert "Traceback" not in err


# train


def test_train_writes_weights(trained):
    assert trained["code"] == 0
    assert trained["weights"].is_file()
    assert sidecar_path(trained["weights"]).is_file()


def test_train_sidecar_describes_run(trained):
    info = json.loads(sidecar_path(trained["weights"]).read_text())

    assert info["model"] == "plain_cnn"
    assert info["model_config"] == TINY_CONFIG
    assert info["train_config"]["epochs"] == 1
    assert info["test_images"] == TEST_COUNT
    assert len(info["history"]) == 1


def test_train_removes_finished_checkpoint(trained):
    # A finished run deletes its checkpoint, so the same command retrains instead of resuming.
    assert trained["code"] == 0
    assert not trained["checkpoint_left"]


def test_checkpoint_path_differs_by_folder(tmp_path):
    first = checkpoint_path_for(tmp_path / "a" / "plain_cnn.safetensors")
    second = checkpoint_path_for(tmp_path / "b" / "plain_cnn.safetensors")

    assert first != second
    assert first.name.startswith("plain_cnn-")


def test_train_prints_summary(capsys, tmp_path, cifar_str, checkpoint_stem):
    weights = tmp_path / f"{checkpoint_stem}.safetensors"
    params = write_params(tmp_path / "params.yaml")

    code, out, _ = run_cli(capsys, ["train", "tiny", "--params", params, "--weights", weights,
                                    "--data-root", cifar_str.root, "--device", "cpu", "--train-limit", 64])

    assert code == 0
    assert "tiny: accuracy" in out
    assert str(weights) in out


def test_train_epochs_override(capsys, tmp_path, cifar_str, checkpoint_stem):
    weights = tmp_path / f"{checkpoint_stem}.safetensors"
    params = write_params(tmp_path / "params.yaml")

    code, _, _ = run_cli(capsys, ["train", "tiny", "--params", params, "--weights", weights, "--epochs", 2,
                                  "--data-root", cifar_str.root, "--device", "cpu", "--train-limit", 64])

    info = json.loads(sidecar_path(weights).read_text())
    assert code == 0
    assert info["train_config"]["epochs"] == 2
    assert len(info["history"]) == 2


# evaluate


def test_evaluate_json(capsys, trained):
    code, out, _ = run_cli(capsys, ["evaluate", trained["weights"], "--data-root", trained["root"],
                                    "--device", "cpu", "--json"])

    report = json.loads(out)
    assert code == 0
    assert report["count"] == TEST_COUNT
    assert report["tta"] is False
    assert len(report["per_class"]) == 10


def test_evaluate_text_tta(capsys, trained):
    code, out, _ = run_cli(capsys, ["evaluate", trained["weights"], "--data-root", trained["root"],
                                    "--device", "cpu", "--tta"])

    assert code == 0
    assert "flip averaging on" in out
    assert "airplane" in out
    assert "truck" in out


def test_evaluate_matches_sidecar(capsys, trained):
    info = json.loads(sidecar_path(trained["weights"]).read_text())

    _, out, _ = run_cli(capsys, ["evaluate", trained["weights"], "--data-root", trained["root"],
                                 "--device", "cpu", "--json"])

    assert json.loads(out)["accuracy"] == pytest.approx(info["accuracy"])


# benchmark and table


def test_benchmark_logs_row(capsys, trained, tmp_path):
    results = tmp_path / "results.csv"

    code, out, _ = run_cli(capsys, ["benchmark", trained["weights"], "--data-root", trained["root"],
                                    "--device", "cpu", "--warmup-iters", 2, "--measure-iters", 5,
                                    "--results", results, "--step", "pytest"])

    df = read_results(results)
    assert code == 0
    assert len(df) == 1
    assert df.loc[0, "step"] == "pytest"
    assert df.loc[0, "measure_iters"] == 5
    assert df.loc[0, "weights"] == str(trained["weights"])
    assert "p95" in out
    # The synthetic training set is smaller than CIFAR-10's, so the row marks the weights as a quick check.
    assert "weights trained on" in df.loc[0, "notes"]


def test_benchmark_timings_beside_results(capsys, trained, tmp_path, timings_requests):
    # The row stores only the timings file name, so the file belongs next to the chosen log,
    # not in the project's reports/timings/.
    results = tmp_path / "logs" / "results.csv"

    code, _, _ = run_cli(capsys, ["benchmark", trained["weights"], "--data-root", trained["root"],
                                  "--device", "cpu", "--warmup-iters", 0, "--measure-iters", 2,
                                  "--results", results])

    assert code == 0
    assert len(timings_requests) == 1
    assert results.parent in [timings_requests[0], *timings_requests[0].parents]


def test_table_prints_rows(capsys, trained, tmp_path):
    results = tmp_path / "results.csv"
    run_cli(capsys, ["benchmark", trained["weights"], "--data-root", trained["root"], "--device", "cpu",
                     "--warmup-iters", 1, "--measure-iters", 2, "--results", results, "--variant", "first"])

    code, out, _ = run_cli(capsys, ["table", "--results", results])

    assert code == 0
    assert "first" in out
    assert "latency_p95_ms" in out


# Bad inputs


def test_evaluate_missing_weights(capsys, tmp_path, cifar_str):
    missing = tmp_path / "absent.safetensors"

    code, _, err = run_cli(capsys, ["evaluate", missing, "--data-root", cifar_str.root, "--device", "cpu"])

    assert_clean_error(code, err)
    assert str(missing) in err


def test_benchmark_missing_weights(capsys, tmp_path, cifar_str):
    missing = tmp_path / "absent.safetensors"

    code, _, err = run_cli(capsys, ["benchmark", missing, "--data-root", cifar_str.root, "--device", "cpu",
                                    "--results", tmp_path / "results.csv"])

    assert_clean_error(code, err)
    assert not (tmp_path / "results.csv").exists()


def test_evaluate_weights_without_file(capsys, tmp_path, trained):
    # The sidecar is there but the .safetensors file is not.
    weights = tmp_path / "copy.safetensors"
    shutil.copy(sidecar_path(trained["weights"]), sidecar_path(weights))

    code, _, err = run_cli(capsys, ["evaluate", weights, "--data-root", trained["root"], "--device", "cpu"])

    assert_clean_error(code, err)
    assert "not found" in err


def test_evaluate_sidecar_without_model(capsys, tmp_path, trained):
    weights = tmp_path / "copy.safetensors"
    shutil.copy(trained["weights"], weights)
    sidecar_path(weights).write_text(json.dumps({"accuracy": 0.5}))

    code, _, err = run_cli(capsys, ["evaluate", weights, "--data-root", trained["root"], "--device", "cpu"])

    assert_clean_error(code, err)


def test_train_unknown_model_entry(capsys, tmp_path, cifar_str, checkpoint_stem):
    params = write_params(tmp_path / "params.yaml")

    code, _, err = run_cli(capsys, ["train", "no_such_model", "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors",
                                    "--data-root", cifar_str.root, "--device", "cpu"])

    assert_clean_error(code, err)
    assert "no_such_model" in err


def test_train_unknown_arch(capsys, tmp_path, cifar_str, checkpoint_stem):
    params = write_params(tmp_path / "params.yaml", tiny={**TINY_ENTRY, "arch": "vgg_huge"})

    code, _, err = run_cli(capsys, ["train", "tiny", "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors",
                                    "--data-root", cifar_str.root, "--device", "cpu"])

    assert_clean_error(code, err)
    assert "vgg_huge" in err


def test_train_bad_train_option(capsys, tmp_path, cifar_str, checkpoint_stem):
    entry = {**TINY_ENTRY, "train": {"epochs": 1, "learning_rate": 0.1}}
    params = write_params(tmp_path / "params.yaml", tiny=entry)

    code, _, err = run_cli(capsys, ["train", "tiny", "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors",
                                    "--data-root", cifar_str.root, "--device", "cpu"])

    assert_clean_error(code, err)
    assert "learning_rate" in err
    assert f"params {params}, entry 'tiny'" in err


def test_train_muon_on_other_model_fails_before_data(capsys, tmp_path, checkpoint_stem):
    entry = {"arch": "mobilenet_v3_small", "train": {"epochs": 1, "conv_optimizer": "muon"}}
    params = write_params(tmp_path / "params.yaml", mobile=entry)

    code, err, _ = train_without_data(capsys, tmp_path, "mobile", params, checkpoint_stem)

    assert_clean_error(code, err)
    assert "conv_optimizer" in err
    assert "mobilenet_v3_small" in err


def test_train_missing_params_file(capsys, tmp_path, checkpoint_stem):
    code, _, err = run_cli(capsys, ["train", "tiny", "--params", tmp_path / "absent.yaml",
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors"])

    assert_clean_error(code, err)
    assert "absent.yaml" in err


def test_train_data_root_without_data(capsys, tmp_path, checkpoint_stem):
    params = write_params(tmp_path / "params.yaml")

    code, err, empty = train_without_data(capsys, tmp_path, "tiny", params, checkpoint_stem)

    assert_clean_error(code, err)
    assert str(empty) in err


def test_evaluate_data_root_without_data(capsys, tmp_path, trained):
    empty = tmp_path / "empty-root"
    empty.mkdir()

    code, _, err = run_cli(capsys, ["evaluate", trained["weights"], "--data-root", empty, "--device", "cpu"])

    assert_clean_error(code, err)
    assert str(empty) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_evaluate_cuda_unavailable(capsys, trained):
    code, _, err = run_cli(capsys, ["evaluate", trained["weights"], "--data-root", trained["root"],
                                    "--device", "cuda"])

    assert_clean_error(code, err)
    assert "CUDA" in err


def test_table_missing_log(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["table", "--results", tmp_path / "absent.csv"])

    assert_clean_error(code, err)


def test_benchmark_foreign_log(capsys, tmp_path, trained):
    results = tmp_path / "results.csv"
    results.write_text("a,b\n1,2\n")

    code, _, err = run_cli(capsys, ["benchmark", trained["weights"], "--data-root", trained["root"],
                                    "--device", "cpu", "--warmup-iters", 0, "--measure-iters", 1,
                                    "--results", results])

    assert_clean_error(code, err)
    assert results.read_text() == "a,b\n1,2\n"
    assert "not those of a results log" in err


def test_benchmark_results_folder_rejected(capsys, tmp_path, trained):
    code, _, err = run_cli(capsys, ["benchmark", trained["weights"], "--data-root", trained["root"],
                                    "--device", "cpu", "--results", tmp_path])

    assert_clean_error(code, err)
    assert "is a folder" in err


def test_table_foreign_csv(capsys, tmp_path):
    results = tmp_path / "other.csv"
    results.write_text("a,b,c\n1,2,3\n")

    code, _, err = run_cli(capsys, ["table", "--results", results])

    assert_clean_error(code, err)
    assert "not those of a results log" in err


def test_train_yaml_syntax_error(capsys, tmp_path, checkpoint_stem):
    params = tmp_path / "broken.yaml"
    params.write_text("models: [unclosed\n")

    code, _, err = run_cli(capsys, ["train", "tiny", "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors"])

    assert_clean_error(code, err)
    assert "not valid YAML" in err


def test_train_unknown_top_level_key(capsys, tmp_path, checkpoint_stem):
    params = tmp_path / "typo.yaml"
    params.write_text(yaml.safe_dump({"thread": 2, "models": {"tiny": {}}}))

    code, _, err = run_cli(capsys, ["train", "tiny", "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors"])

    assert_clean_error(code, err)
    assert "thread" in err


def test_negative_test_limit_rejected(capsys, trained):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", str(trained["weights"]), "--test-limit", "-5"])

    assert "not a positive integer" in capsys.readouterr().err


def test_non_numeric_threads_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["benchmark", "weights.safetensors", "--threads", "abc"])

    err = capsys.readouterr().err
    assert "'abc' is not a whole number" in err
    assert "_positive_int" not in err


@pytest.mark.parametrize("threads", [0, -3, "abc", 2.5, True])
def test_params_bad_threads(capsys, tmp_path, checkpoint_stem, threads):
    params = tmp_path / "threads.yaml"
    params.write_text(yaml.safe_dump({"threads": threads, "models": {"tiny": TINY_ENTRY}}))

    code, _, err = run_cli(capsys, ["train", "tiny", "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors"])

    assert_clean_error(code, err)
    assert f"threads={threads!r} is invalid" in err


def test_params_bad_device(capsys, tmp_path, checkpoint_stem):
    params = tmp_path / "device.yaml"
    params.write_text(yaml.safe_dump({"device": "gpu", "threads": 1, "models": {"tiny": TINY_ENTRY}}))

    code, _, err = run_cli(capsys, ["train", "tiny", "--params", params,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors"])

    assert_clean_error(code, err)
    assert "device 'gpu' is invalid" in err
    assert "vulkan" not in err


def test_negative_lr_fails_before_data(capsys, tmp_path, checkpoint_stem):
    entry = {**TINY_ENTRY, "train": {**TINY_ENTRY["train"], "lr": -1}}
    params = write_params(tmp_path / "params.yaml", tiny=entry)

    code, err, empty = train_without_data(capsys, tmp_path, "tiny", params, checkpoint_stem)

    assert_clean_error(code, err)
    assert "lr=-1.0 is invalid" in err
    assert str(empty) not in err


def test_threads_above_cores_warn(caplog, monkeypatch):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 1)
    previous = cli.torch.get_num_threads()
    try:
        cli._set_threads(2)
    finally:
        cli.torch.set_num_threads(previous)

    assert "2 threads on 1 CPU cores" in caplog.text


def test_quick_train_keeps_entry_weights(capsys, tmp_path, monkeypatch, cifar_str):
    # Without --weights, a run on part of the data must not replace the entry's weights file.
    monkeypatch.setattr(cli, "QUICK_WEIGHTS_DIR", tmp_path / "runs" / "quick")
    entry_weights = tmp_path / "entry.safetensors"
    entry_weights.write_bytes(b"real weights")
    params = write_params(tmp_path / "params.yaml", tiny={**TINY_ENTRY, "weights": str(entry_weights)})
    quick = tmp_path / "runs" / "quick" / "tiny.safetensors"

    try:
        code, out, _ = run_cli(capsys, ["train", "tiny", "--params", params, "--train-limit", 64,
                                        "--data-root", cifar_str.root, "--device", "cpu"])
    finally:
        checkpoint_path_for(quick).unlink(missing_ok=True)

    assert code == 0
    assert entry_weights.read_bytes() == b"real weights"
    assert quick.is_file()
    assert str(quick) in out


def test_bad_override_fails_before_data(capsys, tmp_path, checkpoint_stem):
    params = write_params(tmp_path / "params.yaml")

    code, _, err = run_cli(capsys, ["train", "tiny", "--params", params, "--time-budget", -1,
                                    "--weights", tmp_path / f"{checkpoint_stem}.safetensors",
                                    "--data-root", tmp_path / "no-data"])

    assert_clean_error(code, err)
    assert "time_budget_s=-1.0 is invalid" in err
    assert "command-line overrides" in err
