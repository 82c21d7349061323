"""Sequential CIFAR-100: 100 classes in 10 tasks of 10, 32x32 RGB.

Reads ``train`` and ``test`` from ``cifar-100-python`` under ``{data_path}``,
``{data_path}/CIFAR100`` or ``{data_path}/cifar100`` (see ``CifarDataset``);
labels are the 100 fine classes.
"""

from __future__ import annotations

from pathlib import Path

from normcl.datasets import DATASETS
from normcl.datasets.seq_cifar10 import CifarDataset


@DATASETS.register("seq-cifar100")
class SequentialCIFAR100(CifarDataset):
    """CIFAR-100 split into 10 ten-class tasks."""

    N_TASKS = 10
    N_CLASSES_PER_TASK = 10
    MEAN = (0.5071, 0.4867, 0.4408)
    STD = (0.2675, 0.2565, 0.2761)
    FOLDER = "cifar-100-python"
    PARENTS = ("CIFAR100", "cifar100")
    TRAIN_FILES = ("train",)
    TEST_FILES = ("test",)
    LABEL_KEY = b"fine_labels"

    @classmethod
    def download(cls, root: Path) -> None:
        from torchvision.datasets import CIFAR100

        CIFAR100(root=str(root), train=True, download=True)
