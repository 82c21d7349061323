"""Joint training: the offline upper bound.

As in mammoth, the stream is only collected; after the last task the network
is trained on the union of all tasks for ``--n_epochs`` epochs, so only the
final row of its accuracy matrix is meaningful.
"""

import torch
from torch import Tensor

from normcl.datasets.utils.continual_dataset import ContinualDataset
from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel
from normcl.utils.stream import epoch_batches


@MODELS.register("joint")
class Joint(ContinualModel):
    # Not stackable: the final training reads the model's one dataset, where a stack's members each have their own
    # class order. It runs alone: one member, drawing its order from the member's generator.
    STACKS = False

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        return torch.zeros((), device=self.device)

    def end_task(self, dataset: ContinualDataset) -> None:
        if self.current_task < dataset.N_TASKS - 1:
            return
        tasks = [dataset.task(t) for t in range(dataset.N_TASKS)]
        x = torch.cat([data.train_x for data in tasks])
        y = torch.cat([data.train_y for data in tasks])
        task_ids = torch.cat([torch.full_like(data.train_y, t) for t, data in enumerate(tasks)])
        self.net.train()
        (generator,) = self.members.generators
        for _ in range(self.args.n_epochs):
            for idx in epoch_batches(len(y), self.args.batch_size, self.device, generator):
                (outputs,) = self.forward_parts([(self.transform(x[idx][None]), task_ids[idx][None])])  # [1, B, ...]
                self.step(self.loss(outputs, y[idx][None]))
