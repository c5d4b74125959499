import hashlib

import numpy as np
import pytest
import torch

from cifar10_latency import data
from cifar10_latency.data import DatasetError

from conftest import TEST_COUNT, TRAIN_PER_BATCH, batch_dict, make_images, write_batch, write_cifar


# Loading both key styles


def test_load_train_shape_and_dtype(cifar):
    train = data.load_split(cifar.root, train=True)

    assert train.images.shape == (5 * TRAIN_PER_BATCH, 3, 32, 32)
    assert train.images.dtype == torch.uint8
    assert train.labels.shape == (5 * TRAIN_PER_BATCH,)
    assert train.labels.dtype == torch.int64


def test_load_train_matches_written(cifar):
    train = data.load_split(cifar.root, train=True)

    assert np.array_equal(train.images.numpy(), cifar.train_images)
    assert np.array_equal(train.labels.numpy(), cifar.train_labels)


def test_load_test_matches_written(cifar):
    test = data.load_test(cifar.root, download=False)

    assert test.images.shape == (TEST_COUNT, 3, 32, 32)
    assert test.images.dtype == torch.uint8
    assert np.array_equal(test.images.numpy(), cifar.test_images)
    assert np.array_equal(test.labels.numpy(), cifar.test_labels)


def test_load_cifar10_limits(cifar):
    train, test = data.load_cifar10(cifar.root, train_limit=10, test_limit=7, download=False)

    assert len(train) == 10
    assert len(test) == 7
    assert np.array_equal(test.images.numpy(), cifar.test_images[:7])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_load_each_pickle_protocol(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar", key_type="str", protocol=protocol)

    test = data.load_test(written.root, download=False)

    assert np.array_equal(test.images.numpy(), written.test_images)


def test_batch_float_labels_rejected(writable_cifar):
    # Labels such as 2.5 are not class indices, and casting them to int64 would hide the corruption.
    labels = np.arange(8) % 10
    payload = batch_dict(make_images(labels, np.random.default_rng(2)), labels, "test", "str")
    payload["labels"] = [value + 0.5 for value in payload["labels"]]
    write_batch(writable_cifar.batches / data.TEST_FILE, payload)

    with pytest.raises(DatasetError):
        data.load_test(writable_cifar.root, download=False)


# Fingerprint


def test_test_sha256_is_file_hash(cifar):
    expected = hashlib.sha256((cifar.batches / data.TEST_FILE).read_bytes()).hexdigest()

    test = data.load_test(cifar.root, download=False)

    assert test.sha256 == expected


def test_train_sha256_covers_batches(cifar):
    digests = "".join(hashlib.sha256((cifar.batches / n).read_bytes()).hexdigest() for n in data.TRAIN_FILES)
    expected = hashlib.sha256(digests.encode()).hexdigest()

    train = data.load_split(cifar.root, train=True)

    assert train.sha256 == expected


# Root resolution


def test_root_explicit_wins_over_env(monkeypatch, cifar_str, cifar_bytes):
    monkeypatch.setenv("CIFAR10_ROOT", str(cifar_bytes.root))

    assert data.resolve_root(cifar_str.root, download=False) == cifar_str.root


def test_root_accepts_batches_folder(cifar_str):
    assert data.resolve_root(cifar_str.batches, download=False) == cifar_str.root


def test_root_from_env_var(monkeypatch, cifar_str):
    monkeypatch.setenv("CIFAR10_ROOT", str(cifar_str.root))

    assert data.resolve_root(None, download=False) == cifar_str.root


def test_root_env_before_defaults(monkeypatch, cifar_str, cifar_bytes):
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [cifar_bytes.root])
    monkeypatch.setenv("CIFAR10_ROOT", str(cifar_str.root))

    assert data.resolve_root(None, download=False) == cifar_str.root


def test_root_from_defaults_in_order(monkeypatch, tmp_path, cifar_str, cifar_bytes):
    monkeypatch.setattr(data, "DEFAULT_ROOTS", [tmp_path / "empty", cifar_bytes.root, cifar_str.root])

    assert data.resolve_root(None, download=False) == cifar_bytes.root


def test_root_explicit_without_data(tmp_path):
    missing = tmp_path / "nothing-here"

    with pytest.raises(DatasetError) as error:
        data.resolve_root(missing, download=False)

    assert str(missing) in str(error.value)
    assert "CIFAR10_ROOT" in str(error.value)


def test_root_env_without_data(monkeypatch, tmp_path):
    missing = tmp_path / "env-root"
    monkeypatch.setenv("CIFAR10_ROOT", str(missing))

    with pytest.raises(DatasetError) as error:
        data.resolve_root(None, download=False)

    assert str(missing) in str(error.value)
    assert "CIFAR10_ROOT" in str(error.value)


def test_root_incomplete_batches(writable_cifar):
    (writable_cifar.batches / "data_batch_3").unlink()

    with pytest.raises(DatasetError) as error:
        data.resolve_root(writable_cifar.root, download=False)

    assert "data_batch_3" in str(error.value)


def test_root_none_no_download(monkeypatch, tmp_path):
    empty = [tmp_path / "a", tmp_path / "b"]
    for path in empty:
        path.mkdir()
    monkeypatch.setattr(data, "DEFAULT_ROOTS", empty)

    with pytest.raises(DatasetError) as error:
        data.resolve_root(None, download=False)

    assert "CIFAR10_ROOT" in str(error.value)
    assert str(empty[0]) in str(error.value)


def test_download_offline_raises(monkeypatch, tmp_path):
    calls = []

    class OfflineCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    target = tmp_path / "download-target"
    monkeypatch.setattr(data, "DOWNLOAD_ROOT", target)

    with pytest.raises(DatasetError) as error:
        data.resolve_root(None, download=True)

    assert "CIFAR10_ROOT" in str(error.value)
    assert str(target) in str(error.value)
    assert calls == [(str(target), True, True)]


def test_download_bad_md5_raises(monkeypatch, tmp_path):
    class CorruptCIFAR10:
        def __init__(self, root, train, download):
            raise RuntimeError("File not found or corrupted.")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", CorruptCIFAR10)

    with pytest.raises(DatasetError) as error:
        data.download_cifar10(tmp_path)

    assert "CIFAR10_ROOT" in str(error.value)


# Broken batch files


def test_batch_missing_file(writable_cifar):
    path = writable_cifar.batches / data.TEST_FILE
    path.unlink()

    with pytest.raises(DatasetError) as error:
        data.load_split(writable_cifar.root, train=False)

    assert str(path) in str(error.value)
    assert "missing" in str(error.value)


@pytest.mark.parametrize("keep", [0, 1, 100, 5000, -10])
def test_batch_truncated_file(writable_cifar, keep):
    path = writable_cifar.batches / "data_batch_2"
    content = path.read_bytes()
    path.write_bytes(content[:keep])

    with pytest.raises(DatasetError) as error:
        data.load_split(writable_cifar.root, train=True)

    assert str(path) in str(error.value)


class Payload:
    """A class that pickles as a call to os.mkdir, to show that loading a batch runs no code."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.target),)


def test_batch_code_pickle_not_run(writable_cifar, tmp_path):
    marker = tmp_path / "created-by-unpickling"
    write_batch(writable_cifar.batches / data.TEST_FILE, {"data": Payload(marker), "labels": []})

    with pytest.raises(DatasetError):
        data.load_test(writable_cifar.root, download=False)

    assert not marker.exists()


class Foreign:
    def __init__(self):
        self.data = np.zeros((2, 3072), np.uint8)


def test_batch_class_instance(writable_cifar):
    write_batch(writable_cifar.batches / data.TEST_FILE, Foreign())

    with pytest.raises(DatasetError):
        data.load_test(writable_cifar.root, download=False)


def test_batch_pickled_list(writable_cifar):
    write_batch(writable_cifar.batches / data.TEST_FILE, [1, 2, 3])

    with pytest.raises(DatasetError) as error:
        data.load_test(writable_cifar.root, download=False)

    assert "list" in str(error.value)


def test_batch_missing_keys(writable_cifar):
    write_batch(writable_cifar.batches / data.TEST_FILE, {"images": np.zeros((2, 3072), np.uint8)})

    with pytest.raises(DatasetError) as error:
        data.load_test(writable_cifar.root, download=False)

    assert "'data'" in str(error.value)


def test_batch_not_a_pickle(writable_cifar):
    (writable_cifar.batches / data.TEST_FILE).write_text("this is a text file, not a pickle\n")

    with pytest.raises(DatasetError):
        data.load_test(writable_cifar.root, download=False)


@pytest.mark.parametrize("array", [
    np.zeros((4, 3071), np.uint8),
    np.zeros((4, 3, 32, 32), np.uint8),
    np.zeros((4, 3072), np.float32),
    np.zeros(3072, np.uint8),
])
def test_batch_wrong_data_shape(writable_cifar, array):
    write_batch(writable_cifar.batches / data.TEST_FILE, {"data": array, "labels": [0] * len(array)})

    with pytest.raises(DatasetError) as error:
        data.load_test(writable_cifar.root, download=False)

    assert "3072" in str(error.value)


def test_batch_data_as_list(writable_cifar):
    write_batch(writable_cifar.batches / data.TEST_FILE, {"data": [[0] * 3072] * 2, "labels": [0, 1]})

    with pytest.raises(DatasetError):
        data.load_test(writable_cifar.root, download=False)


@pytest.mark.parametrize("bad_label", [-1, 10, 255])
def test_batch_label_out_of_range(writable_cifar, bad_label):
    rng = np.random.default_rng(3)
    labels = np.arange(8) % 10
    payload = batch_dict(make_images(labels, rng), labels, "test", "str")
    payload["labels"][5] = bad_label
    write_batch(writable_cifar.batches / data.TEST_FILE, payload)

    with pytest.raises(DatasetError) as error:
        data.load_test(writable_cifar.root, download=False)

    assert "labels" in str(error.value)
    assert str(bad_label) in str(error.value)


@pytest.mark.parametrize("count", [7, 9, 0])
def test_batch_label_count_mismatch(writable_cifar, count):
    rng = np.random.default_rng(4)
    labels = np.arange(8) % 10
    payload = batch_dict(make_images(labels, rng), labels, "test", "str")
    payload["labels"] = [1] * count
    write_batch(writable_cifar.batches / data.TEST_FILE, payload)

    with pytest.raises(DatasetError) as error:
        data.load_test(writable_cifar.root, download=False)

    assert f"{count} labels" in str(error.value)


def test_batch_bytes_keys_protocol_2(writable_cifar):
    rng = np.random.default_rng(5)
    labels = np.arange(12) % 10
    images = make_images(labels, rng)
    write_batch(writable_cifar.batches / data.TEST_FILE, batch_dict(images, labels, "test", "bytes"), protocol=2)

    test = data.load_test(writable_cifar.root, download=False)

    assert np.array_equal(test.images.numpy(), images)
    assert test.labels.tolist() == labels.tolist()


# Normalisation


def test_normalize_uses_channel_stats():
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)

    x = data.normalize(images)

    for channel in range(3):
        expected = (1.0 - data.MEAN[channel]) / data.STD[channel]
        assert torch.allclose(x[0, channel], torch.full((32, 32), expected))
    assert x.dtype == torch.float32


def test_normalize_channels_last():
    images = torch.zeros((2, 3, 32, 32), dtype=torch.uint8)

    x = data.normalize(images, memory_format=torch.channels_last)

    assert x.is_contiguous(memory_format=torch.channels_last)
