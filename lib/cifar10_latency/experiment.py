"""One model from scratch to saved weights: load data, train, evaluate, write safetensors and sidecar."""

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path

from .data import load_cifar10
from .environment import environment_fingerprint, resolve_device
from .evaluate import evaluate
from .models import build_model, count_parameters, weight_size_bytes
from .train import TrainConfig, check_model_options, train
from .weights import save_weights

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def checkpoint_path_for(weights_path):
    """Checkpoint file of the run that writes `weights_path`; the path hash keeps same-named outputs apart."""
    weights_path = Path(weights_path).resolve()
    digest = hashlib.sha256(str(weights_path).encode()).hexdigest()[:10]
    return PROJECT_ROOT / "runs" / "checkpoints" / f"{weights_path.stem}-{digest}.safetensors"


def fit(model_name, model_config, train_config, weights_path, data_root=None, device="auto",
        checkpoint_path=None, resume=True, train_limit=None, test_limit=None):
    """Train `model_name`, evaluate it on the whole test set and save weights; returns (model, info)."""
    if not isinstance(train_config, TrainConfig):
        train_config = TrainConfig.from_dict(train_config)
    # Building the model once before the data loads makes a bad model config fail in a second.
    build_model(model_name, **model_config)
    check_model_options(model_name, train_config)
    device = resolve_device(device)
    train_split, test_split = load_cifar10(data_root, device, train_limit=train_limit, test_limit=test_limit)

    model, summary = train(model_name, model_config, train_config, train_split, test_split, device,
                           checkpoint_path=checkpoint_path, resume=resume)
    plain = evaluate(model, test_split)
    flipped = evaluate(model, test_split, tta=True)
    log.info("%s: test accuracy %.4f (flip averaging: %.4f) after %.0f s of training",
             model_name, plain["accuracy"], flipped["accuracy"], summary["train_seconds"])

    environment = environment_fingerprint(device)
    info = {
        "model": model_name,
        "model_config": model_config,
        "train_config": asdict(train_config),
        "accuracy": plain["accuracy"],
        "per_class_accuracy": plain["per_class"],
        "accuracy_tta": flipped["accuracy"],
        "test_images": plain["count"],
        "train_images": len(train_split),
        "train_seconds": summary["train_seconds"],
        "epochs_equivalent": summary["epochs_equivalent"],
        "train_images_per_second": summary["images_per_second"],
        "autocast_dtype": summary["autocast_dtype"],
        "history": summary["history"],
        "params": count_parameters(model),
        "size_bytes": weight_size_bytes(model),
        "dataset_sha256": test_split.sha256,
        "train_sha256": train_split.sha256,
        "seed": train_config.seed,
        "environment": environment,
    }
    save_weights(model, weights_path, info)
    log.info("Saved %s and its sidecar", weights_path)
    if checkpoint_path:
        # The run is complete, so the same command later trains afresh instead of resuming a finished run.
        Path(checkpoint_path).unlink(missing_ok=True)
    return model, info
