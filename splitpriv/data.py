"""Data sets and the three roles of data in split-learning privacy.

* **private train** - the client's training data (minus a validation slice);
* **private test** - what the attacker tries to reconstruct, never seen in training;
* **proxy** - the attacker's own data, disjoint from both: a held-out slice of the same data set's
  training split, or another data set mapped to the private images' shape.

Images are held as uint8 (N, C, H, W) and served normalised with the data set's mean and std;
:meth:`SplitData.to_unit_range` maps model inputs back to [0, 1] for leakage metrics.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from splitpriv.errors import ConfigError, DataFileError, DataNotFoundError, SplitprivError
from splitpriv.fields import FRACTION, OPEN_FRACTION, POSITIVE_INT, flag, one_of
from splitpriv.registry import Registry

DATA_ROOT_ENV = "SPLITPRIV_DATA"


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """``--data-root``, else env ``SPLITPRIV_DATA``, else ``./data``."""
    return Path(root or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


@dataclass
class ImageSet:
    """Raw images (N, C, H, W) uint8 and labels (N,) int64 of one split of one data set."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices])

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


# ----------------------------------------------------------------------------- loaders

Loader = Callable[[Path, bool, bool, "str | None"], ImageSet]
DATASETS = Registry("data set")  # name -> loader(root, train, download, path) -> ImageSet
register_dataset = DATASETS.register

_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def available_datasets() -> list[str]:
    return DATASETS.names()


def load_images(name: str, root: str | os.PathLike | None = None, train: bool = True,
                download: bool = False, path: str | None = None, key: str = "data.dataset") -> ImageSet:
    """One split of a registered data set as uint8 images; ``key`` names the setting in errors."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(key, name, f"one of {available_datasets()}")
    return DATASETS[name](resolve_data_root(root), train, download, path)


def _fixed_split(images: ImageSet, train: bool, test_fraction: float = 0.2) -> ImageSet:
    """A fixed train/test split (independent of the run's seed) for sets that ship without one."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = round(test_fraction * len(images))
    return images.subset(order[n_test:] if train else order[:n_test])


def _as_nchw(x: np.ndarray, source: str = "images") -> torch.Tensor:
    """uint8 images as (N, C, H, W); any other shape or dtype is a :class:`DataFileError` naming ``source``."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DataFileError(f"{source}: images must be uint8 (0..255), got {x.dtype}; convert them with "
                            f"np.clip(x, 0, 255).astype(np.uint8)")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataFileError(f"{source}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with 1 or 3 channels, "
                            f"got shape {x.shape}")
    if len(x) == 0 or min(x.shape[2:]) == 0:
        raise DataFileError(f"{source}: holds no images (shape {x.shape})")
    return torch.from_numpy(np.require(x, requirements=["C", "W"]))  # frombuffer arrays are read-only


def _as_labels(y: np.ndarray, count: int, source: str = "labels") -> torch.Tensor:
    """Class indices (N,) int64 >= 0 for ``count`` images; anything else names ``source``."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != count:
        raise DataFileError(f"{source}: labels must be one per image, shape ({count},), got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise DataFileError(f"{source}: labels must be integer class indices, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataFileError(f"{source}: labels must be class indices >= 0, found {y.min()}")
    return torch.from_numpy(y.astype(np.int64))


@register_dataset("digits")
def _digits(root: Path, train: bool, download: bool, path: str | None) -> ImageSet:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 16 grey levels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return _fixed_split(ImageSet(_as_nchw(images, "digits"), torch.as_tensor(bunch.target, dtype=torch.int64)), train)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), plain or gzipped: big-endian magic, dims, then uint8 data."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        ndim = raw[3]
        dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim, count=int(np.prod(dims))).reshape(dims)
    except (OSError, EOFError, zlib.error, IndexError, ValueError) as error:
        raise DataFileError(f"{path} is not a complete IDX file ({type(error).__name__}: {error}); it may be truncated: "
                            f"download it again (--download) or restore it") from None


def _torchvision_idx_loader(cls_name: str, folder: str) -> Loader:
    """MNIST-like sets through torchvision; a root whose ``raw/`` holds only the ``.gz`` files
    (torchvision wants them decompressed) is read directly."""

    def load(root: Path, train: bool, download: bool, path: str | None) -> ImageSet:
        import torchvision

        with _unreadable_as(root / folder):
            try:
                ds = getattr(torchvision.datasets, cls_name)(str(root), train=train, download=download)
                return ImageSet(ds.data[:, None].contiguous(), ds.targets.to(torch.int64))
            except RuntimeError:
                pass
        prefix = "train" if train else "t10k"
        raw = root / folder / "raw"
        files = [raw / f"{prefix}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
        if not all(f.exists() for f in files):
            raise DataNotFoundError(
                f"{folder} ({'train' if train else 'test'} split) not found: looked for "
                f"{raw}/{prefix}-images-idx3-ubyte[.gz]. Pass --download to fetch it, or point "
                f"--data-root (or ${DATA_ROOT_ENV}) at a folder holding {folder}/raw/."
            )
        images, labels = (_read_idx(f) for f in files)
        return ImageSet(_as_nchw(images, str(files[0])), _as_labels(labels, len(images), str(files[1])))

    return load


register_dataset("mnist")(_torchvision_idx_loader("MNIST", "MNIST"))
register_dataset("fashion_mnist")(_torchvision_idx_loader("FashionMNIST", "FashionMNIST"))
register_dataset("kmnist")(_torchvision_idx_loader("KMNIST", "KMNIST"))


@contextlib.contextmanager
def _unreadable_as(source: Path):
    """A data file that exists but cannot be decoded becomes a DataFileError naming ``source``."""
    try:
        yield
    except Exception as error:  # any failure to decode an untrusted file means it is unreadable, whatever raised it
        if isinstance(error, (FileNotFoundError, SplitprivError)):
            raise
        raise DataFileError(f"{source} cannot be read ({type(error).__name__}: {str(error)[:200]}); it may be "
                            f"truncated or not the expected format") from None


def _read_npz(path: Path, split_key: str | None = None) -> ImageSet:
    x_key, y_key = (f"x_{split_key}", f"y_{split_key}") if split_key else ("x", "y")
    with _unreadable_as(path), np.load(path, allow_pickle=False) as npz:
        missing = [key for key in (x_key, y_key) if key not in npz.files]
        if missing:
            raise DataFileError(f"{path} lacks {missing}: it holds {sorted(npz.files)}; an npz data set needs uint8 images "
                                f"'x' and labels 'y', or x_train, y_train, x_test, y_test")
        images = _as_nchw(npz[x_key], f"{path}:{x_key}")
        return ImageSet(images, _as_labels(npz[y_key], len(images), f"{path}:{y_key}"))


def _read_jpeg_zip(path: Path, classes: list[str]) -> ImageSet:
    """``train/<class>/NNNN.jpg`` members, in class then index order."""
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    with _unreadable_as(path), zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        for name in names:
            if name.split("/")[-2] not in classes:
                raise DataFileError(f"{path}: member {name} is not in a class folder of {classes}")
            try:
                images.append(np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")))
            except UnidentifiedImageError:
                raise DataFileError(f"{path}: member {name} is not a readable JPEG") from None
            labels.append(classes.index(name.split("/")[-2]))
    if not images:
        raise DataFileError(f"{path} holds no train/<class>/*.jpg images")
    return ImageSet(_as_nchw(np.stack(images), str(path)), torch.tensor(labels, dtype=torch.int64))


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _torchvision_cifar_loader(cls_name: str, folder: str) -> Loader:
    """CIFAR through torchvision; else ``<root>/<folder>/{train,test}.npz`` (x, y) or, for the
    training split, ``train_jpg.zip`` (members ``train/<class>/NNNN.jpg``)."""

    def load(root: Path, train: bool, download: bool, path: str | None) -> ImageSet:
        import torchvision

        with _unreadable_as(root / torchvision.datasets.CIFAR10.base_folder):
            try:
                ds = getattr(torchvision.datasets, cls_name)(str(root), train=train, download=download)
                return ImageSet(_as_nchw(ds.data, cls_name), torch.as_tensor(ds.targets, dtype=torch.int64))
            except RuntimeError:
                pass
        split = "train" if train else "test"
        npz, jpeg_zip = root / folder / f"{split}.npz", root / folder / f"{split}_jpg.zip"
        if npz.exists():
            return _read_npz(npz)
        if jpeg_zip.exists() and cls_name == "CIFAR10":
            return _read_jpeg_zip(jpeg_zip, CIFAR10_CLASSES)
        raise DataNotFoundError(
            f"{cls_name} ({split} split) not found: looked for {root}/{torchvision.datasets.CIFAR10.base_folder}"
            f" (torchvision layout), {npz} and {jpeg_zip}. Pass --download to fetch it, or point "
            f"--data-root (or ${DATA_ROOT_ENV}) at a folder that holds it."
        )

    return load


register_dataset("cifar10")(_torchvision_cifar_loader("CIFAR10", "CIFAR10"))
register_dataset("cifar100")(_torchvision_cifar_loader("CIFAR100", "CIFAR100"))


@register_dataset("npz")
def _npz(root: Path, train: bool, download: bool, path: str | None) -> ImageSet:
    """Any ``.npz`` with uint8 images ``x`` and labels ``y`` (fixed 80/20 split), or with
    ``x_train, y_train, x_test, y_test``."""
    if not path:
        raise ConfigError("data.path", path, "the path of an .npz file with uint8 'x' and labels 'y'")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataNotFoundError(f"npz data file not found: {file} is {'a folder' if file.is_dir() else 'missing'}; "
                                f"give the path of an .npz file")
    with _unreadable_as(file), np.load(file, allow_pickle=False) as npz:
        has_splits = "x_train" in npz.files
    if has_splits:
        return _read_npz(file, "train" if train else "test")
    return _fixed_split(_read_npz(file), train)


# (num_classes, per-sample input shape) of the built-in data sets, so that shape-only work
# (profiling, planning) runs without the data present.
_SHAPES: dict[str, tuple[int, tuple[int, int, int]]] = {
    "digits": (10, (1, 8, 8)), "mnist": (10, (1, 28, 28)), "fashion_mnist": (10, (1, 28, 28)),
    "kmnist": (10, (1, 28, 28)), "cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32)),
}


def dataset_shape(name: str, root: str | os.PathLike | None = None, path: str | None = None) -> tuple[int, tuple[int, int, int]]:
    """(num_classes, input_shape) of a data set: known sets from a table, others by loading them."""
    if name in _SHAPES:
        return _SHAPES[name]
    info = dataset_info(name, load_images(name, root, True, False, path))
    return info.num_classes, info.input_shape


def dataset_info(name: str, train_images: ImageSet) -> DatasetInfo:
    _, c, h, w = train_images.images.shape
    if h != w:
        raise ConfigError("data.dataset", name, f"square images; this one has {h}x{w}")
    if name in _STATS:
        mean, std = _STATS[name]
    else:  # computed once from the whole (fixed) training split, independent of the seed
        unit = train_images.images.float() / 255
        mean = tuple(unit.mean(dim=(0, 2, 3)).tolist())
        std = tuple(unit.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return DatasetInfo(name, class_count(name, train_images.labels), c, h, tuple(mean), tuple(std))


MAX_CLASSES = 100_000


def class_count(name: str, labels: torch.Tensor) -> int:
    """K = largest label + 1, refused when the labels are not class indices 0..K-1 (e.g. one stray
    label of 1,000,000 would build a million-class model)."""
    if len(labels) == 0:
        raise DataFileError(f"data set {name}: the training split holds no images")
    count, present = int(labels.max()) + 1, len(torch.unique(labels))
    if count > MAX_CLASSES or count > 10 * present:
        raise DataFileError(f"data set {name}: labels must be class indices 0..K-1, but the largest label is "
                            f"{count - 1} with only {present} distinct labels; renumber the classes")
    return count


def match_shape(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Map uint8 images of another data set to (channels, size, size): grey <-> RGB, bilinear resize."""
    x = images.float()
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- splits


@dataclass
class DataConfig:
    """Which data and how it is divided among the three roles (validated in ``splitpriv.config``)."""

    dataset: str = field(default="digits", metadata=flag(
        "a registered data set: digits (embedded), mnist, fashion_mnist, kmnist, cifar10, cifar100, npz, or a --plugin's"))
    root: str | None = field(default=None, metadata=flag("folder holding the data sets; none: $SPLITPRIV_DATA, else ./data",
                                                          "data-root"))
    path: str | None = field(default=None, metadata=flag("the .npz file for --dataset npz", "data-path"))
    download: bool = field(default=False, metadata=flag("download torchvision data sets if missing"))
    val_fraction: float = field(default=0.1, metadata=FRACTION)
    proxy_dataset: str | None = field(default=None, metadata=flag(
        "the attacker's proxy data set; none: a held-out slice of --dataset"))
    proxy_split: str = field(default="train", metadata=one_of("train", "test"))
    proxy_fraction: float = field(default=0.2, metadata={**OPEN_FRACTION, **flag("share of the training split held out as proxy data")})
    proxy_size: int | None = field(default=None, metadata={**POSITIVE_INT, **flag("at most this many proxy images")})
    train_size: int | None = field(default=None, metadata={**POSITIVE_INT, **flag("at most this many private training images")})
    test_size: int | None = field(default=None, metadata={**POSITIVE_INT, **flag("at most this many private test images")})


@dataclass
class SplitData:
    info: DatasetInfo
    private_train: ImageSet
    val: ImageSet
    private_test: ImageSet
    proxy: ImageSet
    description: dict = field(default_factory=dict)
    # positions in the data set's train/test split of each role (proxy: empty when from another set)
    indices: dict[str, torch.Tensor] = field(default_factory=dict)

    def normalize(self, unit_images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> model inputs."""
        mean, std = self._stats(unit_images)
        return (unit_images - mean) / std

    def to_unit_range(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs -> images in [0, 1] (where leakage metrics are computed)."""
        mean, std = self._stats(inputs)
        return (inputs * std + mean).clamp(0, 1)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return (torch.tensor(self.info.mean, dtype=like.dtype, device=like.device).view(shape),
                torch.tensor(self.info.std, dtype=like.dtype, device=like.device).view(shape))

    def dataset(self, role: str) -> TensorDataset:
        """Normalised float inputs and labels of one role: private_train, val, private_test, proxy."""
        images = getattr(self, role)
        return TensorDataset(self.normalize(images.images.float() / 255), images.labels)


def _take(n: int | None, available: int, key: str) -> int:
    if n is None:
        return available
    if n > available:
        raise ConfigError(key, n, f"at most {available} (the images available for this role)")
    return n


def make_splits(cfg: DataConfig, seed: int) -> SplitData:
    """Deterministic from ``seed``: the same seed gives the same private/val/proxy partition."""
    train = load_images(cfg.dataset, cfg.root, True, cfg.download, cfg.path)
    test = load_images(cfg.dataset, cfg.root, False, cfg.download, cfg.path)
    info = dataset_info(cfg.dataset, train)
    if test.images.shape[1:] != train.images.shape[1:]:
        raise DataFileError(f"data set {cfg.dataset}: test images are {tuple(test.images.shape[1:])} but training images "
                            f"{tuple(train.images.shape[1:])}")
    if len(test) and int(test.labels.max()) >= info.num_classes:
        raise DataFileError(f"data set {cfg.dataset}: a test label ({int(test.labels.max())}) is outside the training "
                            f"split's classes 0..{info.num_classes - 1}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator)

    same_source = cfg.proxy_dataset in (None, cfg.dataset)
    if same_source and cfg.proxy_split == "test":
        raise ConfigError("data.proxy_split", "test",
                          "'train' when the proxy comes from the private data set (its test split is the private test set)")
    if same_source:
        n_holdout = round(cfg.proxy_fraction * len(train))
        proxy_idx = order[: _take(cfg.proxy_size, n_holdout, "data.proxy_size")]
        order = order[n_holdout:]
        proxy = train.subset(proxy_idx)
        proxy_source = f"{cfg.dataset}:train held-out slice ({cfg.proxy_fraction:g})"
    else:
        other = load_images(cfg.proxy_dataset, cfg.root, cfg.proxy_split == "train", cfg.download, key="data.proxy_dataset")
        pick = torch.randperm(len(other), generator=generator)[: _take(cfg.proxy_size, len(other), "data.proxy_size")]
        other = other.subset(pick)
        proxy = ImageSet(match_shape(other.images, info.in_channels, info.image_size), other.labels)
        proxy_idx = torch.empty(0, dtype=torch.long)
        proxy_source = f"{cfg.proxy_dataset}:{cfg.proxy_split} mapped to {info.input_shape}"

    n_val = round(cfg.val_fraction * len(order))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_idx = train_idx[: _take(cfg.train_size, len(train_idx), "data.train_size")]
    test_idx = torch.randperm(len(test), generator=generator)[: _take(cfg.test_size, len(test), "data.test_size")]
    _check_disjoint(train_idx, val_idx, proxy_idx)
    for role, count in (("private training", len(train_idx)), ("private test", len(test_idx))):
        if count == 0:
            raise DataFileError(f"data set {cfg.dataset}: no {role} images are left ({len(train)} training and "
                                f"{len(test)} test images, after the proxy and validation slices); use a larger data set")

    fingerprint = hashlib.sha256()
    for idx in (train_idx, val_idx, proxy_idx, test_idx):
        fingerprint.update(idx.numpy().tobytes())
    description = {
        "private_train": len(train_idx), "val": len(val_idx), "private_test": len(test_idx),
        "proxy": len(proxy), "proxy_source": proxy_source, "fingerprint": fingerprint.hexdigest()[:16],
    }
    indices = {"private_train": train_idx, "val": val_idx, "proxy": proxy_idx, "private_test": test_idx}
    return SplitData(info, train.subset(train_idx), train.subset(val_idx), test.subset(test_idx), proxy,
                     description, indices)


def _check_disjoint(*index_sets: torch.Tensor) -> None:
    seen: set[int] = set()
    for idx in index_sets:
        values = set(idx.tolist())
        if seen & values:
            raise AssertionError("private, validation and proxy indices overlap")
        seen |= values
