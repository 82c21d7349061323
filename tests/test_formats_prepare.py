"""Datasets' ``prepare()`` on generated files: label checks, missing files and bad paths (offline and with a
download), Fashion-MNIST's layouts, and the task splits of a generated CIFAR-10.

Every test sets ``NORMCL_OFFLINE=1`` (autouse fixture) so a missing file fails
at once instead of waiting on a download.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from format_helpers import (  # _offline: importing the autouse fixture applies it to this module
    CIFAR10_TRAIN,
    _offline,  # noqa: F401
    idx_bytes,
    make_args,
    write_cifar10,
)

from normcl.datasets import seq_fmnist
from normcl.datasets.seq_cifar10 import SequentialCIFAR10
from normcl.datasets.seq_cifar100 import SequentialCIFAR100
from normcl.datasets.seq_miniimg import SequentialMiniImagenet
from normcl.datasets.utils.formats import find_first, find_or_fetch, locate, missing_files_message
from normcl.utils.core.errors import DataError

# ---------------------------------------------------------------- validation through prepare()


def test_labels_outside_class_range(tmp_path: Path) -> None:
    write_cifar10(tmp_path, np.array([0, 1, 2, 3, 10]), np.array([0, 1]))
    ds = SequentialCIFAR10(make_args(tmp_path))
    with pytest.raises(DataError, match=r"seq-cifar10 train labels span \[0, 10\], outside the 10 classes"):
        ds.prepare()


def test_miniimg_negative_label(tmp_path: Path) -> None:
    for split in ("train", "test"):
        np.save(tmp_path / f"{split}_x.npy", np.zeros((2, 84, 84, 3), np.uint8))
        np.save(tmp_path / f"{split}_y.npy", np.array([0, -1]))
    with pytest.raises(DataError, match=r"labels span \[-1, 0\]"):
        SequentialMiniImagenet(make_args(tmp_path)).prepare()


# ---------------------------------------------------------------- missing files and bad paths


def test_find_first_and_locate(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f.gz").write_bytes(b"")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "f").write_bytes(b"")
    (tmp_path / "c" / "g").write_bytes(b"")
    assert find_first([tmp_path / "a", tmp_path / "b", tmp_path / "b" / "f.gz"]) == tmp_path / "b" / "f.gz"
    assert find_first([tmp_path / "nothing"]) is None
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    assert locate(dirs, ["f"], ("", ".gz")) == [tmp_path / "b" / "f.gz"]
    assert locate(dirs, ["f", "g"], ("", ".gz")) == [tmp_path / "c" / "f", tmp_path / "c" / "g"]
    assert locate(dirs, ["f", "h"], ("", ".gz")) is None


def test_missing_files_message_names_everything() -> None:
    dirs = [Path("/d1"), Path("/d2/sub")]
    msg = missing_files_message("seq-x", ["a.npy", "b.npy"], dirs, "run once with internet access to download them")
    assert msg == (
        "seq-x: cannot find a.npy, b.npy in any of /d1, /d2/sub; run once with internet access to download them, "
        "or copy the files into one of those directories (pick the root with --data_path DIR)"
    )
    assert "\n" not in msg


def test_missing_cifar10_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(SequentialCIFAR10, "download", classmethod(lambda cls, root: calls.append(root)))
    with pytest.raises(DataError) as info:
        SequentialCIFAR10(make_args(tmp_path)).prepare()
    msg = str(info.value)
    assert calls == []  # NORMCL_OFFLINE=1: no download attempted
    for name in [*CIFAR10_TRAIN, "test_batch"]:
        assert name in msg
    for d in ("cifar-10-batches-py", "CIFAR10/cifar-10-batches-py", "cifar10/cifar-10-batches-py"):
        assert str(tmp_path / d) in msg
    assert "download skipped: NORMCL_OFFLINE is set" in msg and "--data_path DIR" in msg


def test_missing_fmnist_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message names every folder searched: the system folder only without ``--data_path`` (an explicit one
    holds the data, or the run stops: tests/test_provenance.py)."""
    monkeypatch.setattr(seq_fmnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.chdir(tmp_path)
    for data_path, root, system in ((tmp_path / "data", tmp_path / "data", []), (None, Path("data"), ["no-debian"])):
        with pytest.raises(DataError) as info:
            seq_fmnist.SequentialFMNIST(make_args(data_path)).prepare()
        msg = str(info.value)
        assert msg.startswith("seq-fmnist: cannot find train-images-idx3-ubyte, train-labels-idx1-ubyte, ")
        searched = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, *(tmp_path / d for d in system)]
        assert f"in any of {', '.join(map(str, searched))} (download skipped" in msg
        assert "apt-get install dataset-fashion-mnist` (read without --data_path)" in msg


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NORMCL_OFFLINE")

    def fail() -> None:
        raise OSError("<urlopen error [Errno -2] Name or service not known>\ntraceback line")

    with pytest.raises(DataError, match=r"\(download failed: OSError: <urlopen error .*known>\); run once") as info:
        find_or_fetch("seq-x", [tmp_path], ["f"], "run once with internet access to download them", fetch=fail)
    assert "\n" not in str(info.value)


def test_download_then_research(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_OFFLINE", "0")
    labels = np.arange(10)

    def fake_download(cls: type, root: Path) -> None:
        write_cifar10(root, labels, labels)

    monkeypatch.setattr(SequentialCIFAR10, "download", classmethod(fake_download))
    ds = SequentialCIFAR10(make_args(tmp_path / "fresh"))
    ds.prepare()
    assert ds.task(4).train_y.tolist() == [8, 9]


def test_data_path_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("not a directory")
    for cls in (SequentialCIFAR10, SequentialCIFAR100, SequentialMiniImagenet, seq_fmnist.SequentialFMNIST):
        with pytest.raises(DataError, match=f"^--data_path {re.escape(str(path))} is a file; pass a directory$"):
            cls(make_args(path)).prepare()


# ---------------------------------------------------------------- Fashion-MNIST


def test_seq_fmnist_torchvision_layout_first(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    train_x = np.random.default_rng(1).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(train_x))  # uncompressed, as torchvision extracts
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(20, dtype=np.uint8) % 10)))
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(train_x[:10]))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(10, dtype=np.uint8)))
    train, test = seq_fmnist.SequentialFMNIST(make_args(tmp_path)).load_raw()
    assert train.x.shape == (20, 1, 28, 28) and train.x.dtype == np.uint8
    np.testing.assert_array_equal(train.x[:, 0], train_x)
    assert train.y.tolist() == (np.arange(20) % 10).tolist() and test.y.tolist() == list(range(10))


def test_real_debian_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (seq_fmnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{seq_fmnist.DEBIAN_DIR} is missing (apt-get install dataset-fashion-mnist)")
    monkeypatch.chdir(tmp_path)  # no data/ here
    ds = seq_fmnist.SequentialFMNIST(make_args(None))  # found there without --data_path
    train, test = ds.load_raw()
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert np.bincount(train.y).tolist() == [6000] * 10 and np.bincount(test.y).tolist() == [1000] * 10
    assert train.y[:5].tolist() == [9, 0, 0, 3, 0] and test.y[:5].tolist() == [9, 2, 1, 1, 6]
    ds.prepare()
    assert [len(ds.task(t).train_y) for t in range(5)] == [12000] * 5


# ---------------------------------------------------------------- task splits on a generated CIFAR-10

TRAIN_LABELS = np.arange(100) % 10  # image i has class i % 10 and pixel value i
TEST_LABELS = np.arange(30) % 10


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    write_cifar10(tmp_path, TRAIN_LABELS, TEST_LABELS)
    return tmp_path


def image_ids(x: torch.Tensor) -> list[int]:
    """Recover each image's index in its file from its constant pixel value."""
    return x[:, 0, 0, 0].tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_cifar10_task_splits(cifar_root: Path, seed: int) -> None:
    ds = SequentialCIFAR10(make_args(cifar_root, seed=seed))
    ds.prepare()
    order = np.arange(10) if seed == 0 else np.random.default_rng(43).permutation(10)
    assert ds.class_order.tolist() == order.tolist()
    seen: list[int] = []
    for t in range(5):
        task = ds.task(t)
        assert len(task.train_y) == 20 and len(task.test_y) == 6
        assert set(task.train_y.tolist()) == {2 * t, 2 * t + 1} == set(task.test_y.tolist())
        originals = TRAIN_LABELS[image_ids(task.train_x)]
        # As in the reference (targets = order[targets]): original class c gets label order[c].
        assert set(originals.tolist()) == set(np.flatnonzero(order // 2 == t).tolist())
        np.testing.assert_array_equal(task.train_y.numpy(), order[originals])
        np.testing.assert_array_equal(task.test_y.numpy(), order[TEST_LABELS[image_ids(task.test_x)]])
        seen += sorted(set(originals.tolist()))
    assert sorted(seen) == list(range(10))  # every class in exactly one task


def test_cifar10_samples_per_class_keeps_first(cifar_root: Path) -> None:
    ds = SequentialCIFAR10(make_args(cifar_root, samples_per_class=3))
    ds.prepare()
    kept = sorted(i for t in range(5) for i in image_ids(ds.task(t).train_x))
    assert kept == list(range(30))  # class c's first three images are c, c + 10, c + 20
    assert sum(len(ds.task(t).test_y) for t in range(5)) == 30  # test split untouched


def test_cifar10_validation_holds_out_ten_percent(cifar_root: Path) -> None:
    ds = SequentialCIFAR10(make_args(cifar_root, validation=True))
    ds.prepare()
    train_ids = [i for t in range(5) for i in image_ids(ds.task(t).train_x)]
    val_ids = [i for t in range(5) for i in image_ids(ds.task(t).test_x)]
    assert len(train_ids) == 90 and len(val_ids) == 10
    assert sorted(train_ids + val_ids) == list(range(100))  # validation comes from the training files
    assert sorted(TRAIN_LABELS[val_ids].tolist()) == list(range(10))  # one (10%) of each class
    again = SequentialCIFAR10(make_args(cifar_root, validation=True, seed=1))
    again.prepare()
    assert sorted(i for t in range(5) for i in image_ids(again.task(t).test_x)) == sorted(val_ids)
