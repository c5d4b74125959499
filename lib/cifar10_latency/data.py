"""CIFAR-10 loading from the python-pickle batch layout, with checks and a fingerprint."""

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Per-channel statistics of the CIFAR-10 training set over [0, 1]. Every model receives
# images as (uint8 / 255 - MEAN) / STD, in training, evaluation and timing alike.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOTS = [PROJECT_ROOT / "data", PROJECT_ROOT.parent / "shared" / "cifar10"]
DOWNLOAD_ROOT = PROJECT_ROOT / "data"


class DatasetError(RuntimeError):
    """The data set is missing, truncated or not CIFAR-10; the message names the path and the fix."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, 3, 32, 32)
    labels: torch.Tensor  # int64, (N,)
    sha256: str  # of the batch files, in the order they were read

    def __len__(self):
        return len(self.labels)

    def to(self, device):
        return Split(self.images.to(device), self.labels.to(device), self.sha256)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle only plain containers and numpy arrays, so a foreign pickle cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _has_batches(root):
    folder = Path(root) / BATCHES_DIR
    return all((folder / name).is_file() for name in TRAIN_FILES + [TEST_FILE])


def resolve_root(root=None, download=True):
    """Find the folder that contains `cifar-10-batches-py/`.

    Order: `root` (a CLI option or params value), $CIFAR10_ROOT, `data/`, `../shared/cifar10`.
    A root given explicitly must hold the data. When no default contains it, the official archive
    is downloaded into `data/` by torchvision, which checks its md5.
    """
    for source, value in [("--data-root (or data_root in the params)", root), ("CIFAR10_ROOT", os.environ.get("CIFAR10_ROOT"))]:
        if value:
            path = Path(value).expanduser()
            if path.name == BATCHES_DIR:
                path = path.parent
            if not _has_batches(path):
                later_roots = "data/ and ../shared/cifar10"
                if source != "CIFAR10_ROOT":
                    later_roots = "CIFAR10_ROOT, " + later_roots
                raise DatasetError(
                    f"{source} is {value}, but {path / BATCHES_DIR} does not contain "
                    f"{', '.join(TRAIN_FILES)} and {TEST_FILE}. Set {source} to the folder that contains "
                    f"{BATCHES_DIR}/, or unset it to search {later_roots}."
                )
            return path

    for path in DEFAULT_ROOTS:
        if _has_batches(path):
            return path

    if not download:
        raise DatasetError(
            f"CIFAR-10 not found in {', '.join(str(p) for p in DEFAULT_ROOTS)}. "
            f"Set CIFAR10_ROOT to the folder that contains {BATCHES_DIR}/, or allow the download."
        )
    return download_cifar10(DOWNLOAD_ROOT)


def download_cifar10(root):
    """Download and extract the official archive into `root` (md5-checked by torchvision)."""
    from torchvision.datasets import CIFAR10

    log.info("CIFAR-10 not found locally; downloading the official archive into %s", root)
    try:
        CIFAR10(root=str(root), train=True, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad md5 is a RuntimeError
        raise DatasetError(
            f"Downloading CIFAR-10 into {root} failed ({error}). Without network access, "
            f"set CIFAR10_ROOT to a folder that contains {BATCHES_DIR}/ from the python-version archive."
        ) from error
    return Path(root)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_batch(path):
    """Read one batch file into (uint8 images, int64 labels), with keys as `str` or `bytes`."""
    fix = f"Replace {path} with the file from the official python-version archive, or point CIFAR10_ROOT elsewhere."
    try:
        with open(path, "rb") as f:
            # encoding="bytes" keeps Python 2 keys as b"data"; Python 3 pickles have str keys.
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as error:
        raise DatasetError(f"{path} is missing. {fix}") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as error:
        raise DatasetError(f"{path} is truncated or not a CIFAR-10 batch ({error}). {fix}") from error

    if not isinstance(batch, dict):
        raise DatasetError(f"{path} contains a {type(batch).__name__}, not a CIFAR-10 batch dict. {fix}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(f"{path} has keys {sorted(batch)}, expected 'data' and 'labels'. {fix}")

    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetError(f"{path}: 'data' has shape {shape} and dtype {getattr(data, 'dtype', None)}, expected (N, 3072) uint8. {fix}")
    if labels.shape != (len(data),):
        raise DatasetError(f"{path}: {len(data)} images but {labels.size} labels. {fix}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: labels have dtype {labels.dtype}, expected integers 0..{NUM_CLASSES - 1}. {fix}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{NUM_CLASSES - 1}. {fix}")

    images = torch.from_numpy(data.reshape(-1, *IMAGE_SHAPE).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def load_split(root, train, limit=None):
    """Load the training (5 batches) or test split as uint8 CPU tensors; `limit` keeps the first images."""
    folder = Path(root) / BATCHES_DIR
    names = TRAIN_FILES if train else [TEST_FILE]
    parts = [_read_batch(folder / name) for name in names]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])

    expected = TRAIN_IMAGES if train else TEST_IMAGES
    if len(labels) != expected:
        log.warning("%s contains %d %s images, not the %d of CIFAR-10", folder, len(labels), "training" if train else "test", expected)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]

    digest = hashlib.sha256("".join(file_sha256(folder / name) for name in names).encode()).hexdigest() if train else file_sha256(folder / TEST_FILE)
    return Split(images, labels, digest)


def load_cifar10(root=None, device="cpu", train_limit=None, test_limit=None, download=True):
    """Return (train, test) splits as uint8 tensors on `device`; `test.sha256` is the dataset fingerprint."""
    root = resolve_root(root, download=download)
    log.info("Loading CIFAR-10 from %s", root)
    train = load_split(root, train=True, limit=train_limit).to(device)
    test = load_split(root, train=False, limit=test_limit).to(device)
    return train, test


def load_test(root=None, device="cpu", limit=None, download=True):
    """Return only the test split, for evaluation and timing."""
    root = resolve_root(root, download=download)
    log.info("Loading the CIFAR-10 test split from %s", root)
    return load_split(root, train=False, limit=limit).to(device)


def normalize(images, dtype=torch.float32, memory_format=torch.contiguous_format):
    """Turn uint8 (N, 3, 32, 32) images into the normalised float input every model expects."""
    mean = torch.tensor(MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    # div (not div_) allocates, so a float input is never changed in place.
    x = images.to(dtype).div(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=memory_format)
