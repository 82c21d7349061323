"""Readers for the on-disk dataset formats, and the shared file search / download logic.

Every reader validates what it reads and raises ``DataError`` with a one-line
message that names the file, the problem and the fix, because a truncated
download otherwise surfaces much later as a reshape error or, worse, as silently
wrong images. Reading never goes through torchvision's dataset classes: they
verify md5 sums, which rules out small generated files in tests and copies that
were re-packed by hand.

Downloads (through torchvision) are a best-effort fallback when no copy is found
on disk; they are skipped when the environment variable ``NORMCL_OFFLINE`` is set
to anything but ``""`` or ``"0"``, so tests and air-gapped machines fail fast
with the "missing files" message instead of waiting on the network.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
import zlib
from argparse import Namespace
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from normcl.utils.core.errors import DataError

OFFLINE_ENV = "NORMCL_OFFLINE"
DEFAULT_DATA_PATH = "data"
REFETCH = "delete it and fetch it again"

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte types are big-endian.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

CIFAR_ROW = 3 * 32 * 32


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, transparently gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise DataError(f"cannot open {path}: {exc.strerror}; check that it exists and is readable") from exc
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a cut-off stream raises EOFError.
        raise DataError(f"{path} is not a valid gzip file ({exc}); {REFETCH}") from exc


def read_idx(path: Path | str) -> np.ndarray:
    """Parse an IDX file (MNIST / Fashion-MNIST), raw or gzip-compressed, into a native-endian array.

    The last files read are kept decoded, keyed by the file's resolved path, inode, size and modification and change
    times, so the runs of one process (a notebook, a grid of in-process runs, the tests) gunzip Fashion-MNIST once
    (0.4 s a run); each call returns its own writable copy."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return _decode_idx.__wrapped__(path, None)  # uncached: _read_bytes names the problem
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return _decode_idx(path, key).copy()


@functools.lru_cache(maxsize=8)
def _decode_idx(path: Path, key: tuple | None) -> np.ndarray:
    """``read_idx``'s work; ``key`` (the file's identity and times) only keys the cache, so a file rewritten or
    replaced is read again."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); {REFETCH}")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} has a truncated IDX header ({ndim} dimensions, {len(raw)} bytes); {REFETCH}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        problem = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataError(
            f"{path} is {problem}: {len(raw) - header} data bytes for shape {dims}, expected {expected}; {REFETCH}"
        )
    # astype copies, so the result is writable and owns its memory (frombuffer over bytes is read-only).
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _load_pickle(path: Path) -> object:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="bytes")
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise DataError(f"cannot open {path}: {exc.strerror}; check that it exists and is readable") from exc
    except Exception as exc:  # unpickling corrupt bytes can raise nearly any exception type
        raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); {REFETCH}") from exc


def read_cifar_batches(paths: Sequence[Path | str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR "python version" pickles into uint8 (N, 3, 32, 32) images and int64 (N,) labels.

    ``label_key`` is ``b"labels"`` for CIFAR-10 and ``b"fine_labels"`` for CIFAR-100. Each data row
    holds 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major, so a plain reshape
    gives channel-first images. The files are pickles, as distributed: only read copies you trust.
    """
    images, labels = [], []
    for p in map(Path, paths):
        batch = _load_pickle(p)
        if not isinstance(batch, dict):
            raise DataError(f"{p} holds a {type(batch).__name__}, not a CIFAR batch dict; {REFETCH}")
        missing = [k.decode() for k in (b"data", label_key) if k not in batch]
        if missing:
            raise DataError(f"{p} lacks the key(s) {', '.join(missing)} of a CIFAR batch; {REFETCH}")
        data, y = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW:
            raise DataError(
                f"{p} has data of shape {data.shape} and dtype {data.dtype}, expected uint8 (n, {CIFAR_ROW}); {REFETCH}"
            )
        if y.ndim != 1 or len(y) != len(data) or (len(y) and not np.issubdtype(y.dtype, np.integer)):
            raise DataError(f"{p} has {y.size} labels of type {y.dtype} for {len(data)} images; {REFETCH}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise DataError(f"cannot open {path}: {exc.strerror}; check that it exists and is readable") from exc
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npy array ({exc}); {REFETCH}") from exc


def read_npy_pair(x_path: Path | str, y_path: Path | str, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Read ``*_x.npy`` uint8 images (N, H, W, C) or (N, C, H, W) and ``*_y.npy`` labels; return NCHW, int64."""
    x_path, y_path = Path(x_path), Path(y_path)
    # Memory-mapped so an HWC file is transposed straight into its one in-memory copy.
    x, y = _load_npy(x_path, mmap=True), _load_npy(y_path, mmap=False)
    if x.dtype != np.uint8 or x.ndim != 4 or channels not in (x.shape[1], x.shape[3]):
        raise DataError(
            f"{x_path} holds {x.dtype} of shape {x.shape}, expected uint8 images (N, H, W, {channels}) "
            f"or (N, {channels}, H, W); {REFETCH}"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or (len(y) and not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"{y_path} holds {y.dtype} of shape {y.shape}, expected integer labels (N,); {REFETCH}")
    if len(x) != len(y):
        raise DataError(
            f"{x_path} has {len(x)} images but {y_path.name} has {len(y)} labels; "
            "the pair is mismatched: fetch both files again"
        )
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.shape[1] != channels else np.array(x)
    return x, y.astype(np.int64)


def find_first(candidates: Sequence[Path]) -> Path | None:
    """The first candidate that is an existing regular file, or None."""
    return next((p for p in candidates if p.is_file()), None)


def locate(dirs: Sequence[Path], names: Sequence[str], suffixes: Sequence[str] = ("",)) -> list[Path] | None:
    """Paths of all ``names`` in the first directory that holds every one of them (each with any of ``suffixes``).

    All files must come from one directory so a half-finished download never mixes with another copy.
    """
    for d in dirs:
        found = [find_first([d / f"{n}{s}" for s in suffixes]) for n in names]
        if all(found):
            return [p for p in found if p is not None]
    return None


def missing_files_message(
    dataset: str, names: Sequence[str], dirs: Sequence[Path], how_to_get: str, note: str = ""
) -> str:
    """One line naming the expected files, every directory searched and how to get the files."""
    return (
        f"{dataset}: cannot find {', '.join(names)} in any of {', '.join(map(str, dirs))}{note}; "
        f"{how_to_get}, or copy the files into one of those directories (pick the root with --data_path DIR)"
    )


def offline() -> bool:
    """True when ``NORMCL_OFFLINE`` forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def data_root(args: Namespace) -> Path:
    """``--data_path`` (default ``data``), rejected early when it names a file."""
    raw = getattr(args, "data_path", None) or DEFAULT_DATA_PATH
    root = Path(raw).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"--data_path {raw} is a file; pass a directory")
    return root


def system_dirs(args: Namespace, dirs: Sequence[Path]) -> list[Path]:
    """A dataset's folders outside ``--data_path`` (a system-wide copy), searched only when ``--data_path`` is not
    given: an explicit ``--data_path`` that holds no data is an error, never a silent fallback to another copy."""
    return [] if getattr(args, "data_path", None) else list(dirs)


def file_record(paths: Sequence[Path]) -> dict[str, Any]:
    """Where a run's data came from: the folder of ``paths`` and each file's size and modification time (UTC)."""
    folder = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    files = {}
    for path in paths:
        stat = path.stat()
        modified = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds")
        files[str(path.resolve().relative_to(folder))] = {"bytes": stat.st_size, "modified": modified}
    return {"folder": str(folder), "files": files}


def find_or_fetch(
    dataset: str,
    dirs: Sequence[Path],
    names: Sequence[str],
    how_to_get: str,
    fetch: Callable[[], object] | None = None,
    suffixes: Sequence[str] = ("",),
) -> list[Path]:
    """Locate ``names`` in ``dirs``; if absent, run ``fetch`` (unless offline) and look again.

    Any exception from ``fetch`` is reduced to one clause of the final message: a network failure is
    an expected condition here, not a bug, and must not reach the user as a urllib traceback.
    """
    found = locate(dirs, names, suffixes)
    if found is not None:
        return found
    note = ""
    if fetch is not None and offline():
        note = f" (download skipped: {OFFLINE_ENV} is set)"
    elif fetch is not None:
        try:
            fetch()
        except Exception as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            note = f" (download failed: {type(exc).__name__}: {first_line})"
        found = locate(dirs, names, suffixes)
        if found is not None:
            return found
    raise DataError(missing_files_message(dataset, names, dirs, how_to_get, note))
