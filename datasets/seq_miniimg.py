"""Sequential Mini-ImageNet: 100 classes in 20 tasks of 5, 84x84 RGB.

Uses the numpy files of mammoth's ``miniImagenet.zip`` (as the AdaB²N reference
does): ``train_x.npy`` / ``test_x.npy`` with uint8 images (N, 84, 84, 3) and
``train_y.npy`` / ``test_y.npy`` with class ids 0..99. Channel-first (N, 3, 84, 84)
images are accepted too. There is no automatic download: the archive sits behind
an interactive share link, so the files must be copied in by hand.
"""

from __future__ import annotations

from normcl.datasets import DATASETS
from normcl.datasets.utils.continual_dataset import ContinualDataset, RawSplit
from normcl.datasets.utils.formats import data_root, read_npy_pair

FILES = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")


@DATASETS.register("seq-miniimg")
class SequentialMiniImagenet(ContinualDataset):
    """Mini-ImageNet split into 20 five-class tasks."""

    N_TASKS = 20
    N_CLASSES_PER_TASK = 5
    SHAPE = (3, 84, 84)
    # The AdaB²N reference's statistics (datasets/seq_miniimagenet.py), not ImageNet's.
    MEAN = (0.47313006, 0.44905752, 0.40378186)
    STD = (0.27292014, 0.26559181, 0.27953038)

    def load_raw(self) -> tuple[RawSplit, RawSplit]:
        root = data_root(self.args)
        dirs = [root / "miniimagenet", root / "MINIIMG", root / "mini-imagenet", root]
        how = (
            "these are the numpy files of mammoth's miniImagenet.zip: *_x.npy uint8 images (N, 84, 84, 3) "
            "or (N, 3, 84, 84), *_y.npy integer labels 0..99; "
            f"unzip it into {root / 'mini-imagenet'}"
        )
        train_x, train_y, test_x, test_y = self.find_files(dirs, FILES, how_to_get=how)
        return RawSplit(*read_npy_pair(train_x, train_y)), RawSplit(*read_npy_pair(test_x, test_y))
