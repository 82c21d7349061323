"""Joint training: the offline upper bound.

As in mammoth, the stream is only collected; after the last task the network
is trained on the union of all tasks for ``--n_epochs`` epochs, so only the
final row of its accuracy matrix is meaningful.
"""

import torch
from torch import Tensor

from datasets.utils.continual_dataset import ContinualDataset
from models import MODELS
from models.utils.continual_model import ContinualModel
from utils.stream import iterate_batches


@MODELS.register("joint")
class Joint(ContinualModel):
    NAME = "joint"

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        return torch.zeros((), device=self.device)

    def end_task(self, dataset: ContinualDataset) -> None:
        if self.current_task == dataset.N_TASKS - 1:
            tasks = [dataset.task(t) for t in range(dataset.N_TASKS)]
            x = torch.cat([t.train_x for t in tasks])
            y = torch.cat([t.train_y for t in tasks])
            task_ids = torch.div(y, dataset.N_CLASSES_PER_TASK, rounding_mode="floor")
            self.net.train()
            for _ in range(self.args.n_epochs):
                for idx in iterate_batches(len(y), self.args.batch_size, self.device):
                    (outputs,) = self.forward_parts([(self.transform(x[idx]), task_ids[idx])])
                    self.step(self.loss(outputs, y[idx]))
        super().end_task(dataset)
