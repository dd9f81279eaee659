"""Datasets: synthetic generation, in-memory batches, and each file format read from tiny files
the tests write (IDX, CIFAR pickles, image folders), so nothing is downloaded."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from torch.utils.data import DataLoader

from normbench.data import (
    DatasetBundle,
    build_datasets,
    cifar,
    dataset_dir,
    fashion_mnist,
    imagenet,
    list_datasets,
    synthetic,
)
from normbench.data.memory import InMemoryImageDataset, collate
from normbench.errors import UserError
from normbench.train.loader import build_loaders

ALL_DATASETS = {"cifar10", "cifar100", "fashion_mnist", "imagenet", "synthetic"}


def _build(name: str, root: str | None, **overrides):
    args = dict(seed=0, image_size=None, train_size=None, val_size=None, augment=True,
                download=False, bad_images="fail")  # fmt: skip
    return build_datasets(name, root, **{**args, **overrides})


# ---------------------------------------------------------------- registry


def test_list_datasets_names_all_five():
    assert {name for name, _ in list_datasets()} == ALL_DATASETS


def test_unknown_dataset_lists_the_allowed_names():
    with pytest.raises(UserError) as err:
        _build("cifar1000", None)
    assert "cifar1000" in str(err.value)
    assert all(name in str(err.value) for name in ALL_DATASETS)


def test_unknown_bad_images_policy_is_a_user_error():
    with pytest.raises(UserError, match="bad_images 'ignore'.*fail, skip"):
        _build("synthetic", None, bad_images="ignore", train_size=10, val_size=10)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_a_function_of_the_seed():
    x, y = synthetic.generate(100, 8, 0, "train")
    x2, y2 = synthetic.generate(100, 8, 0, "train")
    x3, _ = synthetic.generate(100, 8, 1, "train")
    assert x.shape == (100, 3, 8, 8) and x.dtype == torch.uint8
    assert y.shape == (100,) and y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, x3)


def test_synthetic_chunks_are_balanced_and_smaller_sizes_are_prefixes():
    big_x, big_y = synthetic.generate(1500, 8, 3, "train")
    small_x, small_y = synthetic.generate(500, 8, 3, "train")
    assert torch.equal(big_x[:500], small_x) and torch.equal(big_y[:500], small_y)
    counts = torch.bincount(big_y[:1000], minlength=synthetic.NUM_CLASSES)
    assert counts.tolist() == [1000 // synthetic.NUM_CLASSES] * synthetic.NUM_CLASSES
    val_x, _ = synthetic.generate(500, 8, 3, "val")
    assert not torch.equal(val_x, small_x)


@pytest.mark.parametrize("key", ["image_size", "train_size", "val_size"])
def test_synthetic_data_have_no_sizes_of_their_own(key):
    sizes = {"image_size": 8, "train_size": 10, "val_size": 10, key: None}
    with pytest.raises(UserError, match=f"dataset.{key}=null: synthetic images are generated"):
        _build("synthetic", None, **sizes)


def test_synthetic_bundle_shapes():
    bundle = _build("synthetic", None, image_size=12, train_size=40, val_size=20)
    image, label = bundle.train[0]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32
    assert 0 <= label < bundle.num_classes == synthetic.NUM_CLASSES
    assert (len(bundle.train), len(bundle.val), bundle.in_channels) == (40, 20, 3)


# ---------------------------------------------------------------- in-memory batches


def _memory_dataset(augment: bool = True) -> InMemoryImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(10) % 3
    return InMemoryImageDataset(images, labels, (0.5,) * 3, (0.25,) * 3, augment=augment, pad=2)


def test_batched_items_equal_stacked_single_items():
    ds = _memory_dataset()
    ds.set_epoch(4)
    indices = [7, 2, 2, 9, 0]
    batch = ds.__getitems__(indices)
    singles = [ds[i] for i in indices]
    assert torch.equal(batch.images, torch.stack([image for image, _ in singles]))
    assert batch.labels.tolist() == [label for _, label in singles]


def test_augmentation_changes_with_the_epoch_only():
    ds = _memory_dataset()
    indices = list(range(10))
    ds.set_epoch(0)
    first = ds.__getitems__(indices).images
    assert torch.equal(first, ds.__getitems__(indices).images)
    ds.set_epoch(1)
    assert not torch.equal(first, ds.__getitems__(indices).images)
    plain = _memory_dataset(augment=False)
    assert not torch.equal(first, plain.__getitems__(indices).images)


def test_loader_workers_see_set_epoch():
    """Persistent DataLoader workers hold a copy of the dataset: the epoch must still reach them."""
    ds = _memory_dataset()
    loader = DataLoader(ds, batch_size=5, num_workers=1, persistent_workers=True,
                        collate_fn=collate)  # fmt: skip
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        loaded = torch.cat([images for images, _ in loader])
        assert torch.equal(loaded, ds.__getitems__(list(range(10))).images)


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here"
)
def test_loader_workers_of_a_spawned_rank_start_from_a_fork_server(monkeypatch):
    """torchrun's elastic agent spawns ranks, and spawn is what they hand on: their loader
    workers come from a fork server with torch and the dataset's module imported once, instead
    of each importing torch; elsewhere the default start method is left alone."""
    bundle = DatasetBundle(_memory_dataset(), _memory_dataset(augment=False), 3, 3, 8, collate)
    common = {"batch_per_rank": 5, "val_batch_per_rank": 5, "world_size": 1, "rank": 0, "seed": 0,
              "pin_memory": False}  # fmt: skip
    monkeypatch.setattr(multiprocessing.context._default_context, "_actual_context", None)
    multiprocessing.set_start_method("spawn")  # what a spawned rank's interpreter is given
    train, val, _ = build_loaders(bundle, workers=2, **common)
    for loader in (train, val):
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
    assert multiprocessing.forkserver._forkserver._preload_modules == [
        "torch", type(bundle.train).__module__,
    ]  # fmt: skip
    images, _ = next(iter(train))
    assert images.shape == (5, 3, 8, 8)
    assert build_loaders(bundle, workers=0, **common)[0].multiprocessing_context is None
    multiprocessing.set_start_method("fork", force=True)
    assert build_loaders(bundle, workers=2, **common)[0].multiprocessing_context is None


# ---------------------------------------------------------------- Fashion-MNIST


def _idx_bytes(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(folder: Path, *, gz: bool, n_train: int = 6, n_val: int = 4) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        images_stem, labels_stem = fashion_mnist.FILES[split]
        for stem, array in (
            (images_stem, rng.integers(0, 256, (n, 28, 28))),
            (labels_stem, np.arange(n) % fashion_mnist.NUM_CLASSES),
        ):
            data = _idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    _write_fashion(tmp_path, gz=gz)
    (train_x, train_y), (val_x, val_y) = fashion_mnist.load(tmp_path)
    assert train_x.shape == (6, 1, 28, 28) and train_x.dtype == torch.uint8
    assert val_x.shape == (4, 1, 28, 28)
    assert train_y.tolist() == list(range(6)) and val_y.tolist() == list(range(4))


def test_fashion_mnist_rejects_a_corrupt_file(tmp_path):
    _write_fashion(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])  # truncated
    with pytest.raises(UserError, match=re.escape(str(bad))):
        fashion_mnist.load(tmp_path)


def test_fashion_mnist_missing_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "system"))
    with pytest.raises(UserError) as err:
        _build("fashion_mnist", str(tmp_path / "given"))
    message = str(err.value)
    for folder in ("given", "given/FashionMNIST/raw", "system"):
        assert str(tmp_path / folder) in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.root" in message


@pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.SYSTEM_DIR), reason="Debian dataset-fashion-mnist not installed"
)
def test_fashion_mnist_reads_the_debian_files():
    (train_x, train_y), (val_x, val_y) = fashion_mnist.load(Path(fashion_mnist.SYSTEM_DIR))
    assert train_x.shape == (60000, 1, 28, 28) and val_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train_y).tolist() == [6000] * 10
    assert torch.bincount(val_y).tolist() == [1000] * 10


# ---------------------------------------------------------------- CIFAR

# The layout torchvision reads: pickled dicts of flattened (N, 3*32*32) uint8 rows and labels.
_CIFAR_FILES = {
    "cifar10": {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "labels": "labels", "meta": ("batches.meta", "label_names"), "classes": 10,
    },
    "cifar100": {
        "train": ["train"], "test": ["test"],
        "labels": "fine_labels", "meta": ("meta", "fine_label_names"), "classes": 100,
    },
}  # fmt: skip


def _write_cifar(root: Path, variant: str, per_file: int = 3) -> Path:
    """A tiny CIFAR folder in torchvision's pickle format; returns the folder."""
    spec = _CIFAR_FILES[variant]
    folder = cifar.folder(variant, root)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate(spec["train"] + spec["test"]):
        entry = {
            "data": rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8),
            spec["labels"]: [(i * per_file + j) % spec["classes"] for j in range(per_file)],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta_file, meta_key = spec["meta"]
    names = [f"class{c}" for c in range(spec["classes"])]
    (folder / meta_file).write_bytes(pickle.dumps({meta_key: names}))
    return folder


@pytest.fixture
def no_cifar_checksums(monkeypatch):
    """torchvision checks the real files' MD5 sums; the fake files only have to exist."""
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_loads_a_torchvision_folder(tmp_path, no_cifar_checksums, variant):
    folder = _write_cifar(tmp_path, variant)
    (train_x, train_y), (val_x, val_y) = cifar.load(variant, str(tmp_path))
    n_train = 3 * len(_CIFAR_FILES[variant]["train"])
    assert train_x.shape == (n_train, 3, 32, 32) and train_x.dtype == torch.uint8
    assert val_x.shape == (3, 3, 32, 32) and val_y.dtype == torch.int64
    assert train_y.tolist() == [i % _CIFAR_FILES[variant]["classes"] for i in range(n_train)]
    # Channel-first: pixel (0, 0) of channel 1 is entry 1024 of the flattened row.
    first = pickle.loads((folder / _CIFAR_FILES[variant]["train"][0]).read_bytes())["data"][0]
    assert train_x[0, 1, 0, 0] == first[1024] and train_x[0, 2, 31, 31] == first[-1]


def test_cifar_bundle_and_resize(tmp_path, no_cifar_checksums):
    _write_cifar(tmp_path, "cifar10")
    bundle = _build("cifar10", str(tmp_path), image_size=16, train_size=10)
    image, label = bundle.train[0]
    assert image.shape == (3, 16, 16) and 0 <= label < 10
    assert (bundle.num_classes, bundle.in_channels, len(bundle.train), len(bundle.val)) == (
        10, 3, 10, 3,
    )  # fmt: skip
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert cifar.resize_uint8(x, 32) is x
    assert cifar.resize_uint8(x, 20).dtype == torch.uint8
    assert cifar.STATS["cifar100"][2] == 100 and cifar.IMAGE_SIZE == 32


@pytest.mark.parametrize(("variant", "folder"), [("cifar10", "cifar-10-batches-py"),
                                                  ("cifar100", "cifar-100-python")])  # fmt: skip
def test_cifar_missing_folder_says_how_to_fetch_it(tmp_path, variant, folder):
    with pytest.raises(UserError) as err:
        cifar.load(variant, str(tmp_path), download=False)
    assert str(tmp_path / folder) in str(err.value) and "dataset.download=true" in str(err.value)


def test_cifar_incomplete_folder_is_a_user_error(tmp_path, no_cifar_checksums):
    folder = _write_cifar(tmp_path, "cifar10")
    (folder / "test_batch").unlink()
    with pytest.raises(UserError, match="incomplete or corrupt"):
        cifar.load("cifar10", str(tmp_path))


# ---------------------------------------------------------------- ImageFolder


def _write_image_folder(root: Path, train_classes=("ant", "bee", "cat"), val_classes=None) -> None:
    """root/{train,val}/<class>/ with 4 JPEG images of 10 x 12 pixels each."""
    rng = np.random.default_rng(2)
    for split, classes in (("train", train_classes), ("val", val_classes or train_classes)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.JPEG")


def _imagenet(root: Path, **overrides):
    args = dict(seed=0, augment=True, bad_images="fail", train_size=None, val_size=None)
    return imagenet.build(str(root), 8, **{**args, **overrides})


def test_image_folder_items_after_transforms(tmp_path):
    _write_image_folder(tmp_path)
    train, val = _imagenet(tmp_path)
    assert train.classes == val.classes == ["ant", "bee", "cat"]
    assert len(train) == len(val) == 12
    for ds in (train, val):
        image, label = ds[5]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert label == 1
    with pytest.raises(IndexError):
        train[12]


def test_image_folder_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    _write_image_folder(tmp_path)
    train, _ = _imagenet(tmp_path)
    other_seed, _ = _imagenet(tmp_path, seed=1)
    state = torch.get_rng_state()
    first = torch.stack([train[i][0] for i in range(12)])
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert torch.equal(first, torch.stack([train[i][0] for i in reversed(range(12))]).flip(0))
    assert not torch.equal(first, torch.stack([other_seed[i][0] for i in range(12)]))
    train.set_epoch(1)
    assert not torch.equal(first, torch.stack([train[i][0] for i in range(12)]))


def test_image_folder_bundle_and_seeded_subsets(tmp_path):
    _write_image_folder(tmp_path)
    bundle = _build("imagenet", str(tmp_path), image_size=8, train_size=5, val_size=3)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 3, 8)
    assert (len(bundle.train), len(bundle.val)) == (5, 3)
    again, _ = _imagenet(tmp_path, train_size=5)
    other, _ = _imagenet(tmp_path, train_size=5, seed=1)
    assert again.samples == bundle.train.samples != other.samples
    images, labels = bundle.collate_fn([bundle.val[i] for i in range(3)])
    assert images.shape == (3, 3, 8, 8) and labels.shape == (3,)


def test_image_folder_class_mismatch_names_the_classes(tmp_path):
    _write_image_folder(tmp_path, val_classes=("ant", "bee", "dog"))
    with pytest.raises(UserError, match="only in train: cat; only in val: dog"):
        _imagenet(tmp_path)


def test_image_folder_missing_split_names_the_path(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "nowhere"))):
        _imagenet(tmp_path / "nowhere")
    (tmp_path / "train" / "ant").mkdir(parents=True)
    (tmp_path / "train" / "ant" / "0.JPEG").write_bytes(b"not read by the folder check")
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "val"))):
        _imagenet(tmp_path)


def test_image_folder_without_images_is_a_user_error(tmp_path):
    _write_image_folder(tmp_path)
    for image in (tmp_path / "val" / "bee").iterdir():
        image.rename(image.with_suffix(".txt"))
    with pytest.raises(UserError, match="bee"):
        _imagenet(tmp_path)


def _with_corrupt_image(root: Path) -> Path:
    _write_image_folder(root)
    bad = root / "train" / "bee" / "1b.JPEG"  # sorts between 1.JPEG and 2.JPEG
    bad.write_bytes(b"this is not a JPEG" * 10)
    return bad


def _index_of(ds, path: Path) -> int:
    return [p for p, _ in ds.samples].index(str(path))


def test_corrupt_image_fails_naming_the_file(tmp_path):
    bad = _with_corrupt_image(tmp_path)
    train, _ = _imagenet(tmp_path, bad_images="fail")
    train[0]  # readable images load as usual
    with pytest.raises(UserError, match=re.escape(str(bad))):
        train[_index_of(train, bad)]


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    bad = _with_corrupt_image(tmp_path)
    train, _ = _imagenet(tmp_path, bad_images="skip", augment=False)
    index = _index_of(train, bad)
    image, label = train[index]
    expected_image, expected_label = train[index + 1]  # the next sample stands in
    assert torch.equal(image, expected_image) and label == expected_label == 1
    assert train.skipped == {str(bad)}
    train[index]
    assert len(train.skipped) == 1


# A cell on the image folder of _with_corrupt_image: 13 train images, 12 val, 3 steps an epoch.
IMAGE_CELL = ["logger=none", "model=resnet8", "model.width=8", "norm.groups=4",
              "dataset=imagenet", "dataset.image_size=16", "dataset.train_size=null",
              "dataset.val_size=null", "gpus=1", "batch=4", "epochs=2",
              "progress=false"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "devices"), [(0, 1), (2, 1), (2, 2)])
def test_unreadable_image_is_one_line_whatever_the_workers(tmp_path, workers, devices):
    from conftest import run_cli

    bad = _with_corrupt_image(tmp_path / "data")
    args = [*IMAGE_CELL, f"dataset.root={tmp_path / 'data'}", f"dataset.workers={workers}",
            f"devices={devices}", f"gpus={devices}"]  # fmt: skip
    result = run_cli(["train", *args, f"out_dir={tmp_path / 'runs'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    # torch wraps an error from a loader worker in its traceback, and its launcher logs a
    # failed DDP worker's: neither is shown.
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"normbench: unreadable image {bad}: ") and "bad_images=skip" in line
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_skipped_images_are_counted_once_over_workers_and_ranks_and_reported(tmp_path, capsys):
    from conftest import run_cli, run_here

    bad = _with_corrupt_image(tmp_path / "data")
    (tmp_path / "data" / "val" / "ant" / "9.JPEG").write_bytes(b"")  # and one in val
    args = [*IMAGE_CELL, f"dataset.root={tmp_path / 'data'}", "dataset.bad_images=skip",
            "dataset.workers=2", "gpus=2", "devices=2", f"out_dir={tmp_path / 'runs'}"]  # fmt: skip
    result = run_cli(["train", *args], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (metrics,) = (tmp_path / "runs").glob("*/*/metrics.json")
    # 2 epochs x 2 ranks x 2 loader workers each may meet the same file: it counts once.
    assert json.loads(metrics.read_text())["skipped_images"] == 2
    assert str(bad) in (metrics.parent / "skipped_images.txt").read_text()
    report = run_here(["report", str(metrics.parent.parent)], capsys)
    assert report.returncode == 0, report.stderr
    assert f"images skipped (trained and evaluated without them): {metrics.parent.name}: 2" in (
        report.stdout
    )


def test_the_default_real_images_fall_back_to_synthetic_in_one_line(tmp_path, monkeypatch, capsys):
    """Offline (dataset.download=false) and without the files: one line saying where it looked
    and how to fix it, then synthetic data. The download's own fallback: tests/test_download.py."""
    from normbench.hydra_app import with_available_dataset

    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "system"))
    args = ["norm=bn,gn", "batch=4", "dataset.download=false"]
    assert with_available_dataset(args) == [*args, "dataset=synthetic"]
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "Fashion-MNIST not found" in said[0], said
    assert (
        "dataset.download=false" in said[0] and str(tmp_path / "data" / "fashion_mnist") in said[0]
    )
    assert "machinery only" in said[0]
    # A dataset the command names is never replaced, nor is one found where it is looked for.
    assert with_available_dataset(["dataset=fashion_mnist"]) == ["dataset=fashion_mnist"]
    _write_fashion(tmp_path / "data" / "fashion_mnist", gz=True)
    assert with_available_dataset(args) == args
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- where the files are


def test_one_rule_places_every_dataset(tmp_path, monkeypatch):
    """dataset.root, else <data root>/<name>: $NORMBENCH_DATA, else the user's cache."""
    monkeypatch.delenv("NORMBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert dataset_dir("cifar10", None) == tmp_path / "cache" / "normbench" / "data" / "cifar10"
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "data"))
    assert dataset_dir("imagenet", None) == tmp_path / "data" / "imagenet"
    assert dataset_dir("imagenet", str(tmp_path / "mine")) == tmp_path / "mine"


def test_every_dataset_is_read_from_its_folder_in_the_data_root(
    tmp_path, monkeypatch, no_cifar_checksums
):
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "system"))
    _write_fashion(tmp_path / "fashion_mnist", gz=True)
    _write_cifar(tmp_path / "cifar10", "cifar10")
    _write_image_folder(tmp_path / "imagenet")
    sizes = {
        name: len(_build(name, None).train) for name in ("fashion_mnist", "cifar10", "imagenet")
    }
    assert sizes == {"fashion_mnist": 6, "cifar10": 15, "imagenet": 12}


@pytest.mark.parametrize("dataset", sorted(ALL_DATASETS))
def test_no_config_file_places_a_dataset(dataset):
    """The rule above is the only one: no dataset's config file sets a root of its own."""
    from normbench.config import as_config
    from normbench.hydra_app import compose

    assert as_config(compose([f"dataset={dataset}"])).dataset.root is None
