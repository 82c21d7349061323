"""Dataset readers on files written in the exact on-disk formats: IDX, CIFAR pickles, Mini-ImageNet ``.npy`` pairs.

Every test sets ``NORMCL_OFFLINE=1`` (autouse fixture) so a missing file fails
at once instead of waiting on a download.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from format_helpers import (  # _offline: importing the autouse fixture applies it to this module
    CIFAR10_TRAIN,
    _offline,  # noqa: F401
    idx_bytes,
    make_args,
    write_cifar_batch,
)

from normcl.datasets.seq_cifar100 import SequentialCIFAR100
from normcl.datasets.seq_miniimg import SequentialMiniImagenet
from normcl.datasets.utils.formats import _decode_idx, read_cifar_batches, read_idx, read_npy_pair
from normcl.utils.core.errors import DataError

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


def test_read_idx_gives_each_call_its_own_copy_and_reads_a_rewritten_file_again(tmp_path: Path) -> None:
    """The decoded file is kept per process (keyed by the file's identity and times): a caller that writes into
    its array changes no other caller's, and a file rewritten in place is decoded anew."""
    path = tmp_path / "images.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 2), dtype=np.uint8))))
    first = read_idx(path)
    first[0, 0] = 9
    hits = _decode_idx.cache_info().hits
    assert read_idx(path).tolist() == [[0, 0], [0, 0]]
    assert _decode_idx.cache_info().hits == hits + 1, "the second read is the kept one"
    written = path.stat().st_mtime_ns
    path.write_bytes(gzip.compress(idx_bytes(np.full((2, 2), 7, dtype=np.uint8))))
    os.utime(path, ns=(written, written + 10**9))  # a clock tick may hold both writes: a distinct time, as on disk
    assert read_idx(path).tolist() == [[7, 7], [7, 7]]
    path.unlink()
    with pytest.raises(DataError, match=r"cannot open .*images\.idx\.gz"):
        read_idx(path)


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
