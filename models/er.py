"""Experience Replay (Chaudhry et al. 2019): stream and buffer samples in one cross-entropy."""

import torch
from torch import Tensor

from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel


@MODELS.register("er")
class Er(ContinualModel):
    STACKS = True
    USES_BUFFER = True
    NORM_LOSS_ONLY_WHEN_REPLAYING = True  # like the AdaB2N reference's replay methods
    REFERENCE_FORWARD = "joint"  # mammoth's ER concatenates stream and replay batches

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        assert self.buffer is not None
        parts, targets = [(inputs, self.current_task)], [labels]
        if not self.buffer.is_empty():
            buf_inputs, buf_labels, buf_tasks = self.buffer.get_data(self.args.minibatch_size, self.transform)
            parts.append((buf_inputs, buf_tasks))
            targets.append(buf_labels)
        outputs = self.forward_parts(parts)
        loss = self.step(self.loss(torch.cat(outputs, 1), torch.cat(targets, 1)))  # [K, B, ...]: along the batch
        self.remember(not_aug_inputs, labels)
        return loss
