"""Shared helpers of the dataset-format tests (``test_formats*.py``): files written in the exact on-disk formats
(IDX, CIFAR pickles), dataset arguments, and the autouse ``_offline`` fixture, which each test module imports so
that it applies there.
"""

from __future__ import annotations

import pickle
import struct
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMCL_OFFLINE", "1")


def make_args(data_path: Path | str | None, **overrides: object) -> Namespace:
    """A dataset's arguments; ``data_path`` ``None``: no ``--data_path`` given."""
    data_path = None if data_path is None else str(data_path)
    args = Namespace(data_path=data_path, seed=0, no_task_shuffle=False, samples_per_class=None, validation=False)
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
