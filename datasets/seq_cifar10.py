"""Sequential CIFAR-10: 10 classes in 5 tasks of 2, 32x32 RGB.

Also home of ``CifarDataset``, the file search and reading shared with
``seq_cifar100``. The "python version" batches are looked for in
``{data_path}/<folder>``, ``{data_path}/CIFAR10/<folder>`` (mammoth's root) and
``{data_path}/cifar10/<folder>`` (the AdaB²N reference's root). If absent,
torchvision downloads them into ``{data_path}`` unless ``NORMCL_OFFLINE=1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from normcl.datasets import DATASETS
from normcl.datasets.utils.continual_dataset import ContinualDataset, RawSplit
from normcl.datasets.utils.formats import data_root, read_cifar_batches


class CifarDataset(ContinualDataset):
    """A CIFAR benchmark read from the pickled "python version" batches."""

    FOLDER: ClassVar[str]  # directory the archive extracts to
    PARENTS: ClassVar[tuple[str, ...]]  # sub-directories of --data_path that other frameworks use as root
    TRAIN_FILES: ClassVar[tuple[str, ...]]
    TEST_FILES: ClassVar[tuple[str, ...]]
    LABEL_KEY: ClassVar[bytes]
    SHAPE = (3, 32, 32)

    @classmethod
    def download(cls, root: Path) -> None:
        """Fetch and extract the archive into ``root`` (torchvision also checks its md5)."""
        raise NotImplementedError

    def load_raw(self) -> tuple[RawSplit, RawSplit]:
        root = data_root(self.args)
        dirs = [root / parent / self.FOLDER for parent in ("", *self.PARENTS)]
        paths = self.find_files(
            dirs,
            self.TRAIN_FILES + self.TEST_FILES,
            how_to_get="run once with internet access to download them",
            fetch=lambda: self.download(root),
        )
        n_train = len(self.TRAIN_FILES)
        train = RawSplit(*read_cifar_batches(paths[:n_train], self.LABEL_KEY))
        test = RawSplit(*read_cifar_batches(paths[n_train:], self.LABEL_KEY))
        return train, test


@DATASETS.register("seq-cifar10")
class SequentialCIFAR10(CifarDataset):
    """CIFAR-10 split into 5 two-class tasks."""

    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2470, 0.2435, 0.2615)
    FOLDER = "cifar-10-batches-py"
    PARENTS = ("CIFAR10", "cifar10")
    TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
    TEST_FILES = ("test_batch",)
    LABEL_KEY = b"labels"

    @classmethod
    def download(cls, root: Path) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(root=str(root), train=True, download=True)
