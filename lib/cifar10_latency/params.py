"""Profiles in `params/*.yaml`: device, latency settings and one entry per trainable model."""

from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS_DIR = PROJECT_ROOT / "params"
TOP_LEVEL_KEYS = {"device", "threads", "data_root", "models"}


def load_params(path_or_profile):
    """Load a YAML profile from a path, or by name from `params/` (`cpu` reads `params/cpu.yaml`)."""
    path = Path(path_or_profile)
    if not path.suffix:
        path = PARAMS_DIR / f"{path_or_profile}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PARAMS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"params file {path} not found; use a path or one of the profiles: {available}")
    try:
        with open(path) as f:
            params = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"params file {path} is not valid YAML: {error}") from error
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a YAML mapping at the top level, not {type(params).__name__}")
    unknown = set(params) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"{path} has unknown top-level key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    threads = params.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{path}: threads={threads!r} is invalid; use a positive whole number, e.g. 2, "
                         f"or null for torch's default")
    if not isinstance(params.get("device", "auto"), str):
        raise ValueError(f"{path}: device={params['device']!r} is invalid; use cpu, cuda, cuda:N or auto")
    if not isinstance(params.get("models", {}), dict):
        raise ValueError(f"{path}: 'models' must be a mapping from entry name to settings, not a {type(params['models']).__name__}")
    return params


def model_entry(params, name):
    """Return (architecture, model config, training config, weights path) of the entry `name`.

    An entry may set `arch` to train a registered architecture under another name; it defaults to `name`.
    """
    entries = params.get("models", {})
    if name not in entries:
        raise ValueError(f"model {name!r} has no entry under 'models' in the params; entries: {', '.join(entries) or 'none'}")
    entry = entries[name] or {}
    if not isinstance(entry, dict) or not isinstance(entry.get("config", {}) or {}, dict) or not isinstance(entry.get("train", {}) or {}, dict):
        raise ValueError(f"model entry {name!r} and its 'config' and 'train' must be YAML mappings")
    unknown = set(entry) - {"arch", "config", "train", "weights"}
    if unknown:
        raise ValueError(f"model entry {name!r} has unknown key(s) {sorted(unknown)}; valid keys: arch, config, train, weights")
    weights = PROJECT_ROOT / entry.get("weights", f"weights/{name}.safetensors")
    return entry.get("arch", name), entry.get("config", {}) or {}, entry.get("train", {}) or {}, weights
