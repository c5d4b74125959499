import json
import pickle
import struct

import pytest
import torch

from cifar10_latency.models import build_model
from cifar10_latency.weights import (
    WeightsError,
    load_checkpoint,
    load_state,
    load_weights,
    read_info,
    save_checkpoint,
    save_weights,
    sidecar_path,
)

from conftest import TINY_CONFIG


def trained_like(model):
    """Give BatchNorm statistics non-default values, so a lost buffer would show."""
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.fixture
def saved(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    model = trained_like(tiny_model)
    save_weights(model, path, {"model": "plain_cnn", "model_config": TINY_CONFIG, "accuracy": 0.5})
    return model, path


def test_weights_round_trip_outputs(saved):
    model, path = saved
    x = torch.randn(4, 3, 32, 32)

    loaded, info = load_weights(path)

    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert info["accuracy"] == 0.5


def test_weights_round_trip_state(saved):
    model, path = saved

    loaded, _ = load_weights(path)

    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_loaded_in_eval(saved):
    loaded, _ = load_weights(saved[1])

    assert not loaded.training


def test_weights_sidecar_contents(saved):
    _, path = saved

    info = json.loads(sidecar_path(path).read_text())

    assert sidecar_path(path) == path.with_suffix(".json")
    assert info["model"] == "plain_cnn"
    assert info["model_config"] == TINY_CONFIG


def test_weights_no_tmp_left(saved):
    _, path = saved

    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    assert leftovers == []


def test_weights_info_needs_model(tmp_path, tiny_model):
    with pytest.raises(ValueError) as error:
        save_weights(tiny_model, tmp_path / "w.safetensors", {"model_config": TINY_CONFIG})

    assert "'model'" in str(error.value)


def test_weights_file_not_pickle(saved):
    _, path = saved
    content = path.read_bytes()
    header_size = struct.unpack("<Q", content[:8])[0]

    header = json.loads(content[8:8 + header_size])

    assert not content.startswith(b"\x80")  # pickle protocol 2+ opcode
    assert not content.startswith(b"PK")  # torch.save's zip container
    assert "classifier.weight" in header
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(content)


def test_load_mismatched_widths(saved):
    _, path = saved
    other = build_model("plain_cnn", widths=[16, 32], convs_per_stage=1, stem_width=8)

    with pytest.raises(WeightsError) as error:
        load_state(other, path)

    assert str(path) in str(error.value)
    assert "PlainCNN" in str(error.value)
    assert "shape mismatches" in str(error.value)


def test_load_sidecar_wrong_widths(saved):
    _, path = saved
    info = json.loads(sidecar_path(path).read_text())
    info["model_config"]["widths"] = [16, 32]
    sidecar_path(path).write_text(json.dumps(info))

    with pytest.raises(WeightsError) as error:
        load_weights(path)

    assert "does not match" in str(error.value)


def test_load_missing_sidecar(saved):
    _, path = saved
    sidecar_path(path).unlink()

    with pytest.raises(WeightsError) as error:
        load_weights(path)

    assert str(sidecar_path(path)) in str(error.value)
    assert "missing" in str(error.value)


def test_load_sidecar_bad_json(saved):
    _, path = saved
    sidecar_path(path).write_text("{not json")

    with pytest.raises(WeightsError):
        read_info(path)


def test_load_sidecar_without_model(saved):
    _, path = saved
    sidecar_path(path).write_text(json.dumps({"accuracy": 0.5}))

    with pytest.raises(WeightsError):
        load_weights(path)


def test_load_missing_weights(tmp_path, tiny_model):
    path = tmp_path / "absent.safetensors"

    with pytest.raises(WeightsError) as error:
        load_state(tiny_model, path)

    assert "not found" in str(error.value)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x80\x04\x95" + b"\x00" * 64])
def test_load_not_safetensors(saved, content):
    _, path = saved
    path.write_bytes(content)

    with pytest.raises(WeightsError) as error:
        load_weights(path)

    assert "safetensors" in str(error.value)


def test_load_torch_save_file(saved, tiny_model):
    _, path = saved
    torch.save(tiny_model.state_dict(), path)

    with pytest.raises(WeightsError):
        load_weights(path)


# Training checkpoints


def test_checkpoint_round_trip(tmp_path, tiny_model):
    model = trained_like(tiny_model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt.safetensors"

    sample_loss = torch.tensor([0.5, float("nan"), 2.0])
    save_checkpoint(path, model, optimizer, {"epoch": 3, "history": [{"loss": 1.5}]}, tensors={"sample_loss": sample_loss})
    torch.manual_seed(5)
    fresh = build_model("plain_cnn", **TINY_CONFIG)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    state = load_checkpoint(path, fresh, fresh_optimizer)

    # NaN marks an image not seen yet, so it must come back as NaN.
    assert torch.allclose(state.pop("tensors")["sample_loss"], sample_loss, rtol=0, atol=0, equal_nan=True)
    assert state == {"epoch": 3, "history": [{"loss": 1.5}]}
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    for old, new in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(optimizer.state[old]["momentum_buffer"], fresh_optimizer.state[new]["momentum_buffer"])


def test_checkpoint_unreadable(tmp_path, tiny_model):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(b"garbage")
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)

    with pytest.raises(WeightsError) as error:
        load_checkpoint(path, tiny_model, optimizer)

    assert str(path) in str(error.value)


def test_checkpoint_other_model(tmp_path, tiny_model):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_model, torch.optim.SGD(tiny_model.parameters(), lr=0.1), {"epoch": 1})
    other = build_model("plain_cnn", widths=[16], convs_per_stage=1)

    with pytest.raises(WeightsError):
        load_checkpoint(path, other, torch.optim.SGD(other.parameters(), lr=0.1))


def test_sidecar_not_object(saved):
    _, path = saved
    sidecar_path(path).write_text("5")

    with pytest.raises(WeightsError, match="not an object"):
        load_weights(path)
