"""Dataset readers and benchmarks on files written in the exact on-disk formats.

Every test sets ``NORMCL_OFFLINE=1`` (autouse fixture) so a missing file fails
at once instead of waiting on a download.
"""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import seq_fmnist
from datasets.seq_cifar10 import SequentialCIFAR10
from datasets.seq_cifar100 import SequentialCIFAR100
from datasets.seq_miniimg import SequentialMiniImagenet
from datasets.utils.formats import (
    find_first,
    find_or_fetch,
    locate,
    missing_files_message,
    read_cifar_batches,
    read_idx,
    read_npy_pair,
)
from utils.core.errors import DataError

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_OFFLINE", "1")


def make_args(data_path: Path | str, **overrides: object) -> Namespace:
    args = Namespace(data_path=str(data_path), seed=0, no_task_shuffle=False, samples_per_class=None, validation=False)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Serialise ``array`` as IDX: 0, 0, type code, ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: bytes = b"labels") -> None:
    """Pickle a batch dict laid out like the real "python version" files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {
        b"batch_label": b"generated batch",
        label_key: labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar10(root: Path, train_labels: np.ndarray, test_labels: np.ndarray) -> Path:
    """CIFAR-10 whose image i has every byte equal to i (mod 256): the index survives any split."""
    folder = root / "cifar-10-batches-py"
    train_data = np.repeat((np.arange(len(train_labels)) % 256).astype(np.uint8)[:, None], 3072, axis=1)
    for name, rows in zip(CIFAR10_TRAIN, np.array_split(np.arange(len(train_labels)), 5), strict=True):
        write_cifar_batch(folder / name, train_data[rows], train_labels[rows].tolist())
    test_data = np.repeat((np.arange(len(test_labels)) % 256).astype(np.uint8)[:, None], 3072, axis=1)
    write_cifar_batch(folder / "test_batch", test_data, test_labels.tolist())
    return folder


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compressed", [True, False])
def test_read_idx_exact_values(tmp_path: Path, compressed: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("images.idx.gz" if compressed else "images.idx")
    raw = idx_bytes(images)
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable  # torch.from_numpy warns on read-only arrays


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    values = np.array([1, -2, 70000], dtype=np.int32)
    path = tmp_path / "values.idx"
    path.write_bytes(idx_bytes(values, type_code=0x0C))
    out = read_idx(path)
    assert out.dtype == np.dtype(np.int32) and out.dtype.isnative
    assert out.tolist() == [1, -2, 70000]


@pytest.mark.parametrize("header", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00"])
def test_read_idx_bad_magic(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(header + struct.pack(">I", 3) + bytes(3))
    with pytest.raises(DataError, match=r"bad\.idx is not an IDX file.*delete it and fetch it again"):
        read_idx(path)


@pytest.mark.parametrize(("extra", "problem"), [(-1, "truncated"), (1, "longer than its header says")])
def test_read_idx_wrong_length(tmp_path: Path, extra: int, problem: str) -> None:
    raw = idx_bytes(np.zeros((4, 5), dtype=np.uint8))
    raw = raw[:extra] if extra < 0 else raw + bytes(extra)
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=rf"labels\.gz is {problem}: {20 + extra} data bytes for shape \(4, 5\)"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "short.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + bytes(5))
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["not gzip", "cut stream"])
def test_read_idx_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    packed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    path = tmp_path / "images.gz"
    path.write_bytes(b"plain text, no gzip header" if damage == "not gzip" else packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"images\.gz is not a valid gzip file.*fetch it again"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot open .*nothing\.idx"):
        read_idx(tmp_path / "nothing.idx")


# ---------------------------------------------------------------- CIFAR


def test_read_cifar10_batches_pixel_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    labels = np.arange(24) % 10
    data = np.zeros((24, 3072), dtype=np.uint8)
    # Image 13, green plane (second 1024 bytes), row 2, column 5 -> x[13, 1, 2, 5].
    data[13, 1024 + 2 * 32 + 5] = 200
    data[:, 0] = np.arange(24)  # red, row 0, column 0 identifies the image
    for name, rows in zip(CIFAR10_TRAIN, np.array_split(np.arange(20), 5), strict=True):
        write_cifar_batch(folder / name, data[rows], labels[rows].tolist())
    write_cifar_batch(folder / "test_batch", data[20:], labels[20:].tolist())

    x, y = read_cifar_batches([folder / n for n in CIFAR10_TRAIN], b"labels")
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == (np.arange(20) % 10).tolist()
    assert x[:, 0, 0, 0].tolist() == list(range(20))  # batches concatenated in file order
    assert x[13, 1, 2, 5] == 200
    assert int(x.astype(np.int64).sum()) == sum(range(20)) + 200  # nothing else set

    test_x, test_y = read_cifar_batches([folder / "test_batch"], b"labels")
    assert test_x.shape == (4, 3, 32, 32) and test_y.tolist() == [0, 1, 2, 3]


def test_read_cifar100_fine_labels(tmp_path: Path) -> None:
    data = np.zeros((3, 3072), dtype=np.uint8)
    data[2, 2048 + 31 * 32 + 31] = 9  # blue, last pixel
    path = tmp_path / "cifar-100-python" / "train"
    write_cifar_batch(path, data, [99, 0, 42], label_key=b"fine_labels")
    x, y = read_cifar_batches([path], b"fine_labels")
    assert y.tolist() == [99, 0, 42]
    assert x[2, 2, 31, 31] == 9 and int(x.sum()) == 9
    with pytest.raises(DataError, match=r"lacks the key\(s\) labels of a CIFAR batch"):
        read_cifar_batches([path], b"labels")


@pytest.mark.parametrize(
    ("data", "labels", "match"),
    [
        (np.zeros((4, 3000), dtype=np.uint8), [0, 1, 2, 3], r"shape \(4, 3000\).*expected uint8 \(n, 3072\)"),
        (np.zeros((4, 3072), dtype=np.float32), [0, 1, 2, 3], "dtype float32"),
        (np.zeros((4, 3072), dtype=np.uint8), [0, 1, 2], "3 labels of type int64 for 4 images"),
    ],
)
def test_read_cifar_bad_batch(tmp_path: Path, data: np.ndarray, labels: list[int], match: str) -> None:
    path = tmp_path / "data_batch_1"
    write_cifar_batch(path, data, labels)
    with pytest.raises(DataError, match=match):
        read_cifar_batches([path], b"labels")


def test_read_cifar_not_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="test_batch is not a readable pickle"):
        read_cifar_batches([path], b"labels")


def test_seq_cifar100_reads_mammoth_layout(tmp_path: Path) -> None:
    folder = tmp_path / "CIFAR100" / "cifar-100-python"
    write_cifar_batch(folder / "train", np.zeros((100, 3072), np.uint8), list(range(100)), b"fine_labels")
    write_cifar_batch(folder / "test", np.zeros((100, 3072), np.uint8), list(range(99, -1, -1)), b"fine_labels")
    ds = SequentialCIFAR100(make_args(tmp_path))
    ds.prepare()
    assert [len(ds.task(t).train_y) for t in range(10)] == [10] * 10
    assert ds.task(9).test_y.tolist() == list(range(99, 89, -1))


# ---------------------------------------------------------------- Mini-ImageNet


def test_read_npy_pair_hwc_to_nchw(tmp_path: Path) -> None:
    x = np.arange(2 * 84 * 84 * 3, dtype=np.int64).reshape(2, 84, 84, 3).astype(np.uint8)
    np.save(tmp_path / "train_x.npy", x)
    np.save(tmp_path / "train_y.npy", np.array([3, 7], dtype=np.int32))
    out_x, out_y = read_npy_pair(tmp_path / "train_x.npy", tmp_path / "train_y.npy")
    assert out_x.shape == (2, 3, 84, 84) and out_x.dtype == np.uint8 and out_x.flags.c_contiguous
    assert out_x[1, 2, 10, 20] == x[1, 10, 20, 2]
    np.testing.assert_array_equal(out_x, x.transpose(0, 3, 1, 2))
    assert out_y.dtype == np.int64 and out_y.tolist() == [3, 7]


def test_read_npy_pair_chw_kept(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 84, 84), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([[1], [2]]))
    out_x, out_y = read_npy_pair(tmp_path / "x.npy", tmp_path / "y.npy")
    np.testing.assert_array_equal(out_x, x)
    assert out_y.tolist() == [1, 2]


def test_read_npy_pair_mismatched_lengths(tmp_path: Path) -> None:
    np.save(tmp_path / "test_x.npy", np.zeros((3, 84, 84, 3), np.uint8))
    np.save(tmp_path / "test_y.npy", np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"test_x\.npy has 3 images but test_y\.npy has 2 labels"):
        read_npy_pair(tmp_path / "test_x.npy", tmp_path / "test_y.npy")


def test_read_npy_pair_bad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "float_x.npy", np.zeros((2, 84, 84, 3), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"float_x\.npy holds float32"):
        read_npy_pair(tmp_path / "float_x.npy", tmp_path / "y.npy")
    (tmp_path / "junk_x.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"junk_x\.npy is not a readable \.npy array"):
        read_npy_pair(tmp_path / "junk_x.npy", tmp_path / "y.npy")
    np.save(tmp_path / "obj_y.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.save(tmp_path / "ok_x.npy", np.zeros((2, 84, 84, 3), np.uint8))
    with pytest.raises(DataError, match=r"obj_y\.npy is not a readable \.npy array"):
        read_npy_pair(tmp_path / "ok_x.npy", tmp_path / "obj_y.npy")


def test_seq_miniimg_search_order_and_prepare(tmp_path: Path) -> None:
    for folder, value in (("mini-imagenet", 1), ("MINIIMG", 2)):  # MINIIMG is searched first
        d = tmp_path / folder
        d.mkdir()
        for split in ("train", "test"):
            np.save(d / f"{split}_x.npy", np.full((100, 84, 84, 3), value, np.uint8))
            np.save(d / f"{split}_y.npy", np.arange(100))
    ds = SequentialMiniImagenet(make_args(tmp_path))
    ds.prepare()
    task = ds.task(19)
    assert tuple(task.train_x.shape) == (5, 3, 84, 84) and int(task.train_x.max()) == 2
    assert task.train_y.tolist() == [95, 96, 97, 98, 99]


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
    monkeypatch.setattr(seq_fmnist, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError) as info:
        seq_fmnist.SequentialFMNIST(make_args(tmp_path / "data")).prepare()
    msg = str(info.value)
    assert msg.startswith("seq-fmnist: cannot find train-images-idx3-ubyte, train-labels-idx1-ubyte, ")
    searched = [tmp_path / "data" / "FashionMNIST" / "raw", tmp_path / "data" / "fashion-mnist", tmp_path / "data"]
    assert ", ".join(map(str, [*searched, tmp_path / "no-debian"])) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


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


def test_real_debian_fashion_mnist(tmp_path: Path) -> None:
    if not (seq_fmnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{seq_fmnist.DEBIAN_DIR} is missing (apt-get install dataset-fashion-mnist)")
    ds = seq_fmnist.SequentialFMNIST(make_args(tmp_path))
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
