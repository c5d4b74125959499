"""Shared fixtures: a tiny synthetic CIFAR-10 in the on-disk pickle layout, and isolation guards.

Every test runs with the network blocked, with $CIFAR10_ROOT unset and with the default data
folders pointed at empty temporary folders, so no test reads the real data set or downloads it.
"""

import pickle
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar10_latency import data

# One intra-op thread, because the models here are tiny. On a busy 2-core machine, two threads
# made a training step about 18x slower than one (a single measurement).
torch.set_num_threads(1)

TRAIN_PER_BATCH = 64
TEST_COUNT = 64
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# One RGB colour per class, far apart, so a tiny CNN can learn the synthetic labels in a few steps.
CLASS_COLOURS = np.array([
    [230, 25, 25], [25, 230, 25], [25, 25, 230], [230, 230, 25], [230, 25, 230],
    [25, 230, 230], [128, 128, 128], [240, 240, 240], [15, 15, 15], [200, 120, 40],
], dtype=np.int16)


@dataclass
class SyntheticCifar:
    """A written synthetic data set and the arrays it was written from."""

    root: Path
    key_type: str
    train_images: np.ndarray  # uint8 (5 * TRAIN_PER_BATCH, 3, 32, 32)
    train_labels: np.ndarray  # int64
    test_images: np.ndarray  # uint8 (TEST_COUNT, 3, 32, 32)
    test_labels: np.ndarray  # int64

    @property
    def batches(self):
        return self.root / data.BATCHES_DIR


def make_images(labels, rng, noise=40):
    """Images of the class colour plus uniform noise: learnable, yet different from each other."""
    base = CLASS_COLOURS[labels][:, :, None, None]
    jitter = rng.integers(-noise, noise + 1, size=(len(labels), 3, 32, 32))
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def batch_dict(images, labels, batch_label, key_type):
    """The dict of one batch file, with `str` keys (Python 3) or `bytes` keys (Python 2 pickles)."""
    names = [f"synthetic_{i:05d}.png" for i in range(len(labels))]
    if key_type == "bytes":
        return {
            b"batch_label": batch_label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": images.reshape(len(images), 3072),
            b"filenames": [name.encode() for name in names],
        }
    return {
        "batch_label": batch_label,
        "labels": [int(v) for v in labels],
        "data": images.reshape(len(images), 3072),
        "filenames": names,
    }


def write_batch(path, payload, protocol=None):
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)


def write_cifar(root, key_type="str", seed=0, protocol=None):
    """Write data_batch_1..5, test_batch and batches.meta under `root`/cifar-10-batches-py/."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / data.BATCHES_DIR
    folder.mkdir(parents=True)
    # Python 2 writes at most pickle protocol 2, so the `bytes` variant uses it.
    if protocol is None:
        protocol = 2 if key_type == "bytes" else pickle.DEFAULT_PROTOCOL

    train_images, train_labels = [], []
    for index, name in enumerate(data.TRAIN_FILES):
        labels = rng.integers(0, data.NUM_CLASSES, size=TRAIN_PER_BATCH)
        images = make_images(labels, rng)
        write_batch(folder / name, batch_dict(images, labels, f"training batch {index + 1} of 5", key_type), protocol)
        train_images.append(images)
        train_labels.append(labels)

    test_labels = rng.integers(0, data.NUM_CLASSES, size=TEST_COUNT)
    test_images = make_images(test_labels, rng)
    write_batch(folder / data.TEST_FILE, batch_dict(test_images, test_labels, "testing batch 1 of 1", key_type), protocol)

    meta = {"label_names": list(data.CLASSES), "num_cases_per_batch": TRAIN_PER_BATCH, "num_vis": 3072}
    if key_type == "bytes":
        meta = {b"label_names": [n.encode() for n in data.CLASSES], b"num_cases_per_batch": TRAIN_PER_BATCH, b"num_vis": 3072}
    write_batch(folder / "batches.meta", meta, protocol)

    return SyntheticCifar(
        root=Path(root),
        key_type=key_type,
        train_images=np.concatenate(train_images),
        train_labels=np.concatenate(train_labels).astype(np.int64),
        test_images=test_images,
        test_labels=test_labels.astype(np.int64),
    )


@pytest.fixture(scope="session")
def cifar_str(tmp_path_factory):
    """Synthetic data set with `str` keys. It is shared, so tests must not modify it."""
    return write_cifar(tmp_path_factory.mktemp("cifar_str"), key_type="str")


@pytest.fixture(scope="session")
def cifar_bytes(tmp_path_factory):
    """Synthetic data set with `bytes` keys. It is shared, so tests must not modify it."""
    return write_cifar(tmp_path_factory.mktemp("cifar_bytes"), key_type="bytes", seed=1)


@pytest.fixture(params=["str", "bytes"])
def cifar(request):
    """Both key styles in turn."""
    return request.getfixturevalue(f"cifar_{request.param}")


@pytest.fixture
def writable_cifar(tmp_path):
    """A private copy that a test may corrupt."""
    return write_cifar(tmp_path / "cifar", key_type="str")


@pytest.fixture(scope="session")
def test_split(cifar_str):
    return data.load_test(cifar_str.root, download=False)


@pytest.fixture(scope="session")
def train_split(cifar_str):
    return data.load_split(cifar_str.root, train=True)


TINY_CONFIG = {"widths": [8, 16], "convs_per_stage": 1, "stem_width": 8}


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    from cifar10_latency.models import build_model

    return build_model("plain_cnn", **TINY_CONFIG).eval()


@pytest.fixture
def checkpoint_stem():
    """Yield a unique weights stem, then delete the checkpoint that `cifar10-latency train` wrote for it."""
    stem = f"pytest-{uuid.uuid4().hex[:10]}"
    yield stem
    folder = PROJECT_ROOT / "runs" / "checkpoints"
    for path in (folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.tmp"):
        path.unlink(missing_ok=True)


def _network_blocked(*args, **kwargs):
    raise OSError("network access is blocked in the test suite")


class _DownloadBlocked:
    def __init__(self, *args, **kwargs):
        raise OSError("CIFAR-10 download is blocked in the test suite")


@pytest.fixture(autouse=True)
def isolate(monkeypatch, tmp_path):
    """Block the network and downloads, hide the real data set and restore torch's thread count."""
    monkeypatch.setattr(socket.socket, "connect", _network_blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", _network_blocked)
    monkeypatch.setattr(socket, "create_connection", _network_blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _network_blocked)
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _DownloadBlocked)

    monkeypatch.delenv("CIFAR10_ROOT", raising=False)
    empty_roots = [tmp_path / "default-root-a", tmp_path / "default-root-b"]
    monkeypatch.setattr(data, "DEFAULT_ROOTS", empty_roots)
    monkeypatch.setattr(data, "DOWNLOAD_ROOT", tmp_path / "download-root")

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
