"""Sequential Fashion-MNIST: 10 classes in 5 tasks of 2, 28x28 grayscale.

The four IDX files (each raw or ``.gz``) are searched, in order, in
``{data_path}/FashionMNIST/raw`` (torchvision's layout), ``{data_path}/fashion-mnist``,
``{data_path}`` and, when ``--data_path`` is not given (``data``), ``/usr/share/datasets/fashion-mnist``
(Debian package ``dataset-fashion-mnist``). Only if none holds all four is a torchvision download
tried, into ``{data_path}``; setting ``NORMCL_OFFLINE=1`` skips it (the tests do,
so they never wait on the network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from normcl.datasets import DATASETS
from normcl.datasets.utils.continual_dataset import ContinualDataset, RawSplit
from normcl.datasets.utils.formats import data_root, read_idx, system_dirs

# Module-level so tests can point it elsewhere: the system copy cannot be hidden otherwise.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _download(root: Path) -> None:
    """Fetch all four files into ``root/FashionMNIST/raw`` (one instance downloads both splits)."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root=str(root), train=True, download=True)


@DATASETS.register("seq-fmnist")
class SequentialFMNIST(ContinualDataset):
    """Fashion-MNIST split into 5 two-class tasks."""

    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    SHAPE = (1, 28, 28)
    MEAN = (0.2860,)
    STD = (0.3530,)
    HFLIP = True
    CROP_PADDING = 4

    def load_raw(self) -> tuple[RawSplit, RawSplit]:
        root = data_root(self.args)
        dirs = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, *system_dirs(self.args, [DEBIAN_DIR])]
        paths = self.find_files(
            dirs,
            FILES,
            how_to_get="run once with internet access to download them, or `apt-get install dataset-fashion-mnist` "
            "(read without --data_path)",
            fetch=lambda: _download(root),
            suffixes=("", ".gz"),
        )
        train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
        return RawSplit(_channel_first(train_x), train_y), RawSplit(_channel_first(test_x), test_y)


def _channel_first(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); other shapes pass through for the base class to reject with its message."""
    return images[:, None] if images.ndim == 3 else images
