"""Dark Experience Replay (Buzzega et al. 2020): replay the logits the network gave each stored sample."""

import torch.nn.functional as F
from torch import Tensor

from models import MODELS
from models.utils.continual_model import ContinualModel


@MODELS.register("der")
class Der(ContinualModel):
    NAME = "der"
    USES_BUFFER = True
    DEFAULT_ALPHA = 0.3  # --alpha when not given (mammoth's seq-cifar10 value); 0 would make DER plain SGD

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        assert self.buffer is not None
        parts = [(inputs, self.current_task)]
        replay = not self.buffer.is_empty()
        if replay:
            buf_inputs, _, buf_logits, buf_tasks = self.buffer.get_data(self.args.minibatch_size, self.transform)
            parts.append((buf_inputs, buf_tasks))
        outputs = self.forward_parts(parts)
        loss = self.loss(outputs[0], labels)
        if replay:
            loss = loss + self.args.alpha * F.mse_loss(outputs[1], buf_logits)
        total = self.step(loss)
        self.buffer.add_data(
            not_aug_inputs, labels=labels, logits=outputs[0].detach(), task_labels=self.stream_tasks(labels)
        )
        return total
