"""Classification data loaders: image folders, CIFAR pickles, IDX / Fashion-MNIST, digits."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activedet.data.base import ClassificationDataset
from activedet.data.classification import (
    FASHION_MNIST_DIR,
    export_classification,
    load_cifar,
    load_digits,
    load_fashion_mnist,
    load_idx,
    load_image_folder,
)
from activedet.errors import ConfigError, DatasetError


# ------------------------------------------------------------------ image folder
def _png(path: Path, value: int, size: tuple[int, int] = (5, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_image_folder_layout_classes_ids_and_lazy_pixels(tmp_path: Path) -> None:
    _png(tmp_path / "dog" / "img10.png", 10)
    _png(tmp_path / "dog" / "img2.png", 20)
    _png(tmp_path / "cat" / "a.bmp", 30, size=(7, 3))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "cat" / "b.JPG")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path)
    assert isinstance(ds, ClassificationDataset)
    assert ds.class_names == ["cat", "dog"]
    assert ds.ids == [0, 1, 2, 3]
    assert [ds.record(i).file_name for i in ds.ids] == [
        os.path.join("cat", "a.bmp"), os.path.join("cat", "b.JPG"),
        os.path.join("dog", "img2.png"), os.path.join("dog", "img10.png")]
    assert [ds.label(i) for i in ds.ids] == [0, 0, 1, 1]
    assert (ds.record(0).width, ds.record(0).height) == (7, 3)
    arr = ds.load_array(2)
    assert arr.shape == (4, 5, 3) and arr.dtype == np.uint8 and int(arr[0, 0, 0]) == 20


def test_image_folder_empty_class_folder_is_named(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", 1)
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match="dog"):
        load_image_folder(tmp_path)


def test_image_folder_without_classes_or_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nope")


def test_image_folder_unreadable_image_named_with_id(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", 1)
    _png(tmp_path / "cat" / "b.png", 1)
    (tmp_path / "cat" / "c.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetError) as info:
        load_image_folder(tmp_path)
    assert "c.png" in str(info.value) and "image id 2" in str(info.value)


def test_export_then_reload_round_trip(tmp_path: Path) -> None:
    ds = load_digits("test", {"n_test": 30, "size": 16})
    export_classification(ds, tmp_path / "out")
    back = load_image_folder(tmp_path / "out")
    assert len(back) == len(ds)
    for i in back.ids:
        orig_id = int(Path(back.record(i).file_name).stem)
        assert back.class_names[back.label(i)] == ds.class_names[ds.label(orig_id)]
        np.testing.assert_array_equal(back.load_array(i), ds.load_array(orig_id))


# ------------------------------------------------------------------------- CIFAR
def _cifar_batch(rng: np.random.Generator, n: int, n_classes: int, label_key: bytes) -> tuple[dict, np.ndarray]:
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane
    labels = [int(v) for v in rng.integers(0, n_classes, n)]
    return {b"data": data, label_key: labels, b"filenames": [f"f{k}.png".encode() for k in range(n)]}, images


def _dump(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"class{c}".encode() for c in range(10)]
    _dump({b"label_names": names, b"num_cases_per_batch": 2}, d / "batches.meta")
    train_imgs, train_labels = [], []
    for k in range(1, 6):
        batch, imgs = _cifar_batch(rng, 2, 10, b"labels")
        _dump(batch, d / f"data_batch_{k}")
        train_imgs.append(imgs)
        train_labels += batch[b"labels"]
    batch, test_imgs = _cifar_batch(rng, 3, 10, b"labels")
    _dump(batch, d / "test_batch")
    return np.concatenate(train_imgs), train_labels, test_imgs, batch[b"labels"]


def test_cifar10_round_trip(tmp_path: Path) -> None:
    train_imgs, train_labels, test_imgs, test_labels = _write_cifar10(tmp_path)
    train = load_cifar(tmp_path, "train")  # parent folder of cifar-10-batches-py
    assert train.ids == list(range(10)) and train.class_names[3] == "class3"
    for i in train.ids:
        np.testing.assert_array_equal(train.load_array(i), train_imgs[i])
        assert train.label(i) == train_labels[i]
    test = load_cifar(tmp_path / "cifar-10-batches-py", "test")
    assert len(test) == 3 and test.load_array(2).shape == (32, 32, 3)
    np.testing.assert_array_equal(test.load_array(1), test_imgs[1])
    assert [test.label(i) for i in test.ids] == test_labels


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _dump({b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
           b"coarse_label_names": [b"c"] * 20}, tmp_path / "meta")
    batch, imgs = _cifar_batch(rng, 4, 100, b"fine_labels")
    batch[b"coarse_labels"] = [0] * 4
    _dump(batch, tmp_path / "train")
    ds = load_cifar(tmp_path, "train")
    assert ds.num_classes == 100 and len(ds) == 4
    assert [ds.label(i) for i in ds.ids] == batch[b"fine_labels"]
    np.testing.assert_array_equal(ds.load_array(3), imgs[3])


def test_cifar_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    (d / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar(tmp_path, "train")
    (d / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test_batch"):
        load_cifar(tmp_path, "test")
    _dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, d / "test_batch")
    with pytest.raises(DatasetError, match="3072"):
        load_cifar(tmp_path, "test")
    with pytest.raises(DatasetError, match="no CIFAR data"):
        load_cifar(tmp_path / "elsewhere", "train")


class _Evil:
    def __reduce__(self):  # would run os.system if unpickled naively
        return (os.system, ("echo pwned",))


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    _dump({b"data": _Evil(), b"labels": [0]}, tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DatasetError, match="not allowed"):
        load_cifar(tmp_path, "test")


# ---------------------------------------------------------------------------- IDX
def _idx_bytes(arr: np.ndarray) -> bytes:
    header = (0x0800 + arr.ndim).to_bytes(4, "big")
    header += b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = _idx_bytes(arr)
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (root / stem).write_bytes(raw)


def test_idx_plain_and_gzip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    labels = np.array([0, 1, 2, 9, 3, 4], np.uint8)
    _write_idx(tmp_path / "plain", "train", images, labels, gz=False)
    _write_idx(tmp_path / "gz", "train", images, labels, gz=True)
    for sub, suffix in (("plain", ""), ("gz", ".gz")):
        im, lab = load_idx(tmp_path / sub / f"train-images-idx3-ubyte{suffix}",
                           tmp_path / sub / f"train-labels-idx1-ubyte{suffix}")
        np.testing.assert_array_equal(im, images)
        assert lab.dtype == np.int64 and lab.tolist() == labels.tolist()


def test_idx_validation_errors_name_the_file(tmp_path: Path) -> None:
    images = np.zeros((3, 2, 2), np.uint8)
    good_images, good_labels = tmp_path / "im", tmp_path / "lab"
    good_images.write_bytes(_idx_bytes(images))
    good_labels.write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x00\x00\x0d\x03" + _idx_bytes(images)[4:])
    with pytest.raises(DatasetError, match="bad_magic.*magic number"):
        load_idx(bad_magic, good_labels)
    with pytest.raises(DatasetError, match="/im has magic number 0x00000803, expected 0x00000801"):
        load_idx(good_images, good_images)  # image file given as labels: 3 dims, not 1
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(images)[:-1])
    with pytest.raises(DatasetError, match="short"):
        load_idx(short, good_labels)
    four = tmp_path / "four"
    four.write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetError, match="disagree"):
        load_idx(good_images, four)
    with pytest.raises(DatasetError, match="missing"):
        load_idx(tmp_path / "absent", good_labels)


def test_fashion_mnist_options_on_synthetic_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path, "train", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
               rng.integers(0, 10, 50).astype(np.uint8), gz=True)
    _write_idx(tmp_path, "t10k", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
               rng.integers(0, 10, 20).astype(np.uint8), gz=False)
    a = load_fashion_mnist("train", {"root": str(tmp_path), "n_train": 10, "seed": 3})
    b = load_fashion_mnist("train", {"root": str(tmp_path), "n_train": 10, "seed": 3})
    c = load_fashion_mnist("train", {"root": str(tmp_path), "n_train": 10, "seed": 4})
    assert a.ids == b.ids != c.ids and len(a) == 10
    arr = a.load_array(a.ids[0])
    assert arr.shape == (28, 28, 3) and (arr[..., 0] == arr[..., 2]).all()
    assert len(load_fashion_mnist("test", {"root": str(tmp_path), "n_test": None})) == 20
    with pytest.raises(ConfigError, match="n_test"):
        load_fashion_mnist("test", {"root": str(tmp_path), "n_test": 21})
    with pytest.raises(ConfigError, match="bogus"):
        load_fashion_mnist("train", {"root": str(tmp_path), "bogus": 1})
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", {"root": str(tmp_path / "none")})


def test_fashion_mnist_debian_package_files() -> None:
    """Real data from the Debian package; fails (does not skip) when it is not installed."""
    if not FASHION_MNIST_DIR.is_dir():
        pytest.fail(f"{FASHION_MNIST_DIR} is missing: run `apt-get install -y dataset-fashion-mnist` "
                    "(the Makefile's setup step installs it)")
    train = load_fashion_mnist("train", None)
    test = load_fashion_mnist("test", {"seed": 1})
    assert len(train) == 3000 and len(test) == 1000
    assert train.class_names[9] == "Ankle boot"
    assert max(train.ids) < 60000 and max(test.ids) < 10000
    assert set(train.label(i) for i in train.ids) == set(range(10))
    arr = train.load_array(train.ids[0])
    assert arr.shape == (28, 28, 3) and arr.dtype == np.uint8 and arr.max() > 0
    assert load_fashion_mnist("train", {"n_train": 3000}).ids == train.ids


# ------------------------------------------------------------------------ digits
def test_digits_split_is_deterministic_disjoint_and_stratified() -> None:
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797 and not set(train.ids) & set(test.ids)
    assert load_digits("train").ids == train.ids
    assert load_digits("train", {"seed": 1}).ids != train.ids
    arr = train.load_array(train.ids[0])
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and arr.max() > 200
    n_train = np.bincount([train.label(i) for i in train.ids], minlength=10)
    n_test = np.bincount([test.label(i) for i in test.ids], minlength=10)
    np.testing.assert_allclose(n_test / (n_train + n_test), 0.3, atol=0.01)


def test_digits_options() -> None:
    small = load_digits("train", {"n_train": 100, "size": 16, "seed": 2})
    assert len(small) == 100 and small.load_array(small.ids[0]).shape == (16, 16, 3)
    assert set(small.ids) <= set(load_digits("train", {"seed": 2}).ids)
    assert len(load_digits("test", {"test_fraction": 0.5})) in range(890, 910)
    with pytest.raises(ConfigError, match="size"):
        load_digits("train", {"size": 0})
    with pytest.raises(ConfigError, match="n_images"):
        load_digits("train", {"n_images": 3})
    with pytest.raises(ConfigError, match="valid"):
        load_digits("valid")
