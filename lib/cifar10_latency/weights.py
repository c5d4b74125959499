"""Weights and training checkpoints in safetensors (never pickle), with a JSON sidecar."""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .models import build_model


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or does not match its model."""


def _atomic_save(tensors, path, metadata=None):
    # Write beside the target then rename, so a crash mid-write leaves the previous file intact.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    # safetensors creates the file readable by its owner only; weights are meant to be shared.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def sidecar_path(weights_path):
    return Path(weights_path).with_suffix(".json")


def save_weights(model, path, info):
    """Save `model`'s state dict to `path` (.safetensors) and `info` to the .json sidecar beside it.

    `info` must hold at least `model` (a registry name) and `model_config` so the file can be reloaded.
    """
    for key in ("model", "model_config"):
        if key not in info:
            raise ValueError(f"weights info needs {key!r} to rebuild the model; got keys {sorted(info)}")
    _atomic_save(model.state_dict(), path)
    tmp = sidecar_path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, sidecar_path(path))


def read_info(path):
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise WeightsError(f"{sidecar} is missing; it records which model {path} belongs to. Retrain, or restore the file beside the weights.")
    try:
        info = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{sidecar} is not valid JSON ({error}); restore it or retrain.") from error
    if not isinstance(info, dict):
        raise WeightsError(f"{sidecar} contains a JSON {type(info).__name__}, not an object; restore it or retrain.")
    missing = [key for key in ("model", "model_config") if key not in info]
    if missing:
        raise WeightsError(f"{sidecar} lacks {', '.join(missing)}, so the model cannot be rebuilt; restore the sidecar or retrain.")
    if not isinstance(info["model_config"], dict):
        raise WeightsError(f"{sidecar}: model_config is {info['model_config']!r}, not a JSON object; restore it or retrain.")
    return info


def load_state(model, path):
    """Load a safetensors state dict into `model`, raising WeightsError when they do not match."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; train the model first or check the path.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error}); retrain or restore it.") from error
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        def sample(keys):
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        problems = [f"{len(keys)} {what} ({sample(keys)})" for what, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped)) if keys]
        raise WeightsError(f"{path} does not match {type(model).__name__}: {'; '.join(problems)}. "
                           f"Check that the sidecar names the model these weights were trained as.")
    model.load_state_dict(state, strict=True)
    return model


def load_weights(path, device="cpu"):
    """Rebuild the model named in the sidecar and load its weights; returns (model, info)."""
    if not Path(path).is_file():
        raise WeightsError(f"weights file {path} not found; train the model first or check the path.")
    info = read_info(path)
    try:
        model = build_model(info["model"], **info["model_config"])
    except ValueError as error:
        raise WeightsError(f"{sidecar_path(path)} describes a model that cannot be built: {error}") from error
    load_state(model, path)
    return model.to(device).eval(), info


def save_checkpoint(path, model, optimizer, state, tensors=None):
    """Save model, optimizer momentum buffers, the loop `state` (epoch, step, ...) and the loop's
    own `tensors` (name -> tensor) for resuming."""
    tensors = {**{f"loop.{k}": v for k, v in (tensors or {}).items()}, **{f"model.{k}": v for k, v in model.state_dict().items()}}
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{index}"] = buffer
    _atomic_save(tensors, path, metadata={"state": json.dumps(state)})


def load_checkpoint(path, model, optimizer):
    """Restore what save_checkpoint wrote; returns the loop state, with the loop tensors under "tensors"."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads(f.metadata()["state"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise WeightsError(f"checkpoint {path} is unreadable ({error}); delete it to start training afresh.") from error
    tensors = load_file(str(path))
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"checkpoint {path} does not match the model being trained ({error}); delete it or change the run name.") from error
    device = next(model.parameters()).device
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        key = f"momentum.{index}"
        if key in tensors:
            optimizer.state[param]["momentum_buffer"] = tensors[key].to(device)
    state["tensors"] = {k[len("loop."):]: v for k, v in tensors.items() if k.startswith("loop.")}
    return state
