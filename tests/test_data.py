"""Data sets and the three data roles."""
import zipfile
from io import BytesIO

import numpy as np
import pytest
import torch

from splitpriv.data import DataConfig, load_images, make_splits
from splitpriv.errors import ConfigError, DataNotFoundError


def test_digits_is_the_real_embedded_set():
    train, test = load_images("digits", train=True), load_images("digits", train=False)
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert set(train.labels.tolist()) == set(range(10))


def test_roles_are_disjoint_and_cover_the_training_split():
    data = make_splits(DataConfig(proxy_fraction=0.25, val_fraction=0.1), seed=3)
    train_roles = [set(data.indices[r].tolist()) for r in ("private_train", "val", "proxy")]
    assert all(not (a & b) for i, a in enumerate(train_roles) for b in train_roles[i + 1:])
    assert sum(map(len, train_roles)) == len(load_images("digits", train=True))
    assert len(data.proxy) == round(0.25 * len(load_images("digits", train=True)))
    assert data.description["private_test"] == len(data.private_test) == len(load_images("digits", train=False))


def test_same_seed_same_splits_other_seed_other_splits():
    a, b, c = (make_splits(DataConfig(), seed) for seed in (0, 0, 1))
    assert a.description["fingerprint"] == b.description["fingerprint"] != c.description["fingerprint"]
    assert torch.equal(a.private_train.images, b.private_train.images)


def test_normalisation_round_trips_to_unit_range():
    data = make_splits(DataConfig(), seed=0)
    inputs, _ = data.dataset("private_test").tensors
    assert torch.allclose(data.to_unit_range(inputs), data.private_test.images.float() / 255, atol=1e-6)


def test_proxy_from_another_data_set_is_mapped_to_the_private_shape(mnist_root):
    data = make_splits(DataConfig(dataset="mnist", root=str(mnist_root), proxy_dataset="digits", proxy_size=100,
                                  train_size=500, test_size=100), seed=0)
    assert data.proxy.images.shape == (100, 1, 28, 28) and len(data.indices["proxy"]) == 0
    assert len(data.private_train) == 500 and len(data.private_test) == 100


def test_proxy_from_the_private_test_split_is_refused():
    with pytest.raises(ConfigError, match="proxy_split"):
        make_splits(DataConfig(proxy_split="test"), seed=0)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_gz_only_root_and_torchvision_root_give_the_same_data(mnist_root, tmp_path):
    """../shared/data holds only .gz files in raw/; a torchvision root holds them decompressed."""
    from_gz = load_images("mnist", mnist_root, train=False)
    assert from_gz.images.shape == (10_000, 1, 28, 28)
    assert from_gz.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = 300  # a subset, decompressed as torchvision lays it out
    _write_idx(raw / "t10k-images-idx3-ubyte", from_gz.images[:n, 0].numpy())
    _write_idx(raw / "t10k-labels-idx1-ubyte", from_gz.labels[:n].numpy())
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # torchvision checks all four
        (raw / name).write_bytes((raw / name.replace("train", "t10k")).read_bytes())
    via_torchvision = load_images("mnist", tmp_path, train=False)
    assert torch.equal(via_torchvision.images, from_gz.images[:n])
    assert torch.equal(via_torchvision.labels, from_gz.labels[:n])


def test_missing_data_names_the_path_and_the_download_flag(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_images("fashion_mnist", tmp_path, train=True)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(error.value) and "--download" in str(error.value)


def test_cifar10_npz_and_jpeg_zip_layouts(tmp_path):
    from PIL import Image

    folder = tmp_path / "CIFAR10"
    folder.mkdir()
    ramp = np.linspace(0, 1, 32)[None, :, None, None] * np.linspace(0, 1, 32)[None, None, :, None]
    colours = np.random.default_rng(0).uniform(0, 255, (6, 1, 1, 3))
    x = (ramp * colours).astype(np.uint8)  # smooth images, which JPEG keeps nearly intact
    np.savez(folder / "test.npz", x=x, y=np.arange(6) % 10)
    test = load_images("cifar10", tmp_path, train=False)
    assert test.images.shape == (6, 3, 32, 32) and torch.equal(test.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    with zipfile.ZipFile(folder / "train_jpg.zip", "w") as archive:
        for cls, index in (("cat", 0), ("airplane", 0), ("airplane", 1)):
            buffer = BytesIO()
            Image.fromarray(x[index]).save(buffer, format="JPEG", quality=95)
            archive.writestr(f"train/{cls}/{index:04d}.jpg", buffer.getvalue())
    train = load_images("cifar10", tmp_path, train=True)
    assert train.labels.tolist() == [0, 0, 3]  # airplane, airplane, cat (class-folder order)
    assert (train.images[0].float() - test.images[0].float()).abs().mean() < 3  # JPEG is lossy


def test_real_cifar10_test_npz(mnist_root):
    test = load_images("cifar10", mnist_root, train=False)
    assert test.images.shape == (10_000, 3, 32, 32) and test.labels.bincount().tolist() == [1000] * 10


def test_npz_data_set(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x=x, y=np.arange(50) % 5)
    data = make_splits(DataConfig(dataset="npz", path=str(tmp_path / "mine.npz")), seed=0)
    assert data.info.num_classes == 5 and data.info.input_shape == (1, 12, 12)
    assert len(data.private_test) == 10
