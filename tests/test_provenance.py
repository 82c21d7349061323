"""Where a run's data came from (issue 37): every run prints one line naming the files it read and their folder,
and its results file records the folder and each file's size and modification time; an explicit ``--data_path``
that holds no data stops the run (one line, exit 2, nothing written) instead of falling back to the system's copy,
which only the default ``--data_path`` searches."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from format_helpers import idx_bytes
from test_cli import _offline, assert_one_line_error, files_under  # noqa: F401  (autouse: no downloads)

from normcl.datasets import seq_fmnist
from normcl.utils.main import main

QUICK = ["--model", "sgd", "--lr", "0.03", "--bs", "10", "--epochs", "1", "--nf", "4", "--seed", "0", "--nowand", "1"]
QUICK += ["--non_verbose", "1", "--device", "cpu", "--num_threads", "1", "--run_name", "r"]
FILES = [
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]  # fmt: skip


def write_fmnist(folder: Path, per_class: int = 4) -> list[Path]:
    """A small Fashion-MNIST in the IDX format, two files compressed as Debian ships them and two not."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    contents = []
    for n in (per_class * 10, per_class * 10):
        contents += [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10]
    paths = []
    for name, array in zip(FILES, contents, strict=True):
        data = idx_bytes(array)
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        paths.append(folder / name)
    return paths


def results_of(root: Path) -> dict:
    (path,) = root.rglob("r.json")
    return json.loads(path.read_text())


def test_a_run_says_which_files_it_read_and_records_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_fmnist(tmp_path / "data" / "fashion-mnist")
    argv = ["--dataset", "seq-fmnist", *QUICK, "--data_path", str(tmp_path / "data")]
    assert main([*argv, "--results_path", str(tmp_path / "res")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data:")]
    size = sum(p.stat().st_size for p in paths) / 1e6
    assert lines == [f"data: seq-fmnist read {', '.join(FILES)} ({size:.1f} MB) in {paths[0].parent.resolve()}"]
    record = results_of(tmp_path / "res")["data"]
    assert record["folder"] == str(paths[0].parent.resolve())
    modified = [datetime.fromtimestamp(p.stat().st_mtime, UTC).isoformat(timespec="seconds") for p in paths]
    assert record["files"] == {
        p.name: {"bytes": p.stat().st_size, "modified": when} for p, when in zip(paths, modified, strict=True)
    }


def test_an_explicit_data_path_without_the_data_is_an_error_not_a_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    system = write_fmnist(tmp_path / "system")  # a system-wide copy, as Debian's, that the default finds
    monkeypatch.setattr(seq_fmnist, "DEBIAN_DIR", system[0].parent)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "does" / "not" / "exist"
    argv = ["--dataset", "seq-fmnist", *QUICK, "--results_path", str(tmp_path / "res")]
    assert main([*argv, "--data_path", str(empty)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, [f"in any of {empty / 'FashionMNIST' / 'raw'}, {empty / 'fashion-mnist'}, {empty} ("])
    assert str(system[0].parent) not in err and "NORMCL_OFFLINE" in err
    assert files_under(tmp_path / "res") == [] and not empty.exists()
    assert main(argv) == 0  # without --data_path: data/ (absent here), then the system's copy
    assert f"data: seq-fmnist read {', '.join(FILES)} " in capsys.readouterr().out
    assert results_of(tmp_path / "res")["data"]["folder"] == str(system[0].parent.resolve())
    assert results_of(tmp_path / "res")["args"]["data_path"] is None


def test_the_system_copy_is_named_when_the_default_finds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (seq_fmnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{seq_fmnist.DEBIAN_DIR} is missing (apt-get install dataset-fashion-mnist)")
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", "seq-fmnist", *QUICK, "--samples_per_class", "10", "--validation", "1"]  # tests on one a class
    assert main([*argv, "--results_path", str(tmp_path / "res")]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data:")]
    assert line.startswith("data: seq-fmnist read train-images-idx3-ubyte") and line.endswith(
        f" in {seq_fmnist.DEBIAN_DIR}"
    )
    files = results_of(tmp_path / "res")["data"]["files"]
    assert {name: f["bytes"] for name, f in files.items()} == {
        p.name: p.stat().st_size for p in seq_fmnist.DEBIAN_DIR.iterdir() if p.name in files
    } and len(files) == 4
