import pytest

from cifar10_latency import params
from cifar10_latency.params import load_params, model_entry


def test_load_params_path(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text("threads: 2\nmodels:\n  plain_cnn: {}\n")

    assert load_params(path) == {"threads": 2, "models": {"plain_cnn": {}}}


def test_load_params_by_name(tmp_path, monkeypatch):
    (tmp_path / "tiny.yaml").write_text("device: cpu\n")
    monkeypatch.setattr(params, "PARAMS_DIR", tmp_path)

    assert load_params("tiny") == {"device": "cpu"}


def test_load_params_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")

    assert load_params(path) == {}


def test_load_params_missing(tmp_path, monkeypatch):
    (tmp_path / "gpu.yaml").write_text("{}\n")
    monkeypatch.setattr(params, "PARAMS_DIR", tmp_path)

    with pytest.raises(FileNotFoundError) as error:
        load_params("absent")

    assert "absent.yaml" in str(error.value)
    assert "gpu" in str(error.value)


def test_load_params_not_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")

    with pytest.raises(ValueError) as error:
        load_params(path)

    assert "list" in str(error.value)


def test_model_entry_defaults():
    arch, config, train, weights = model_entry({"models": {"plain_cnn": None}}, "plain_cnn")

    assert arch == "plain_cnn"
    assert config == {}
    assert train == {}
    assert weights == params.PROJECT_ROOT / "weights" / "plain_cnn.safetensors"


def test_model_entry_fields():
    entry = {"arch": "plain_cnn", "config": {"widths": [8]}, "train": {"epochs": 1}, "weights": "weights/x.safetensors"}

    arch, config, train, weights = model_entry({"models": {"small": entry}}, "small")

    assert arch == "plain_cnn"
    assert config == {"widths": [8]}
    assert train == {"epochs": 1}
    assert weights == params.PROJECT_ROOT / "weights" / "x.safetensors"


def test_model_entry_unknown_name():
    with pytest.raises(ValueError) as error:
        model_entry({"models": {"plain_cnn": {}}}, "resnet")

    assert "resnet" in str(error.value)
    assert "plain_cnn" in str(error.value)


def test_model_entry_unknown_key():
    with pytest.raises(ValueError) as error:
        model_entry({"models": {"plain_cnn": {"epochs": 3}}}, "plain_cnn")

    assert "epochs" in str(error.value)
