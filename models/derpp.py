"""DER++ (Buzzega et al. 2020): DER's logit replay plus cross-entropy on a second buffer draw."""

import torch.nn.functional as F
from torch import Tensor

from models import MODELS
from models.utils.continual_model import ContinualModel


@MODELS.register("derpp")
class Derpp(ContinualModel):
    NAME = "derpp"
    USES_BUFFER = True
    DEFAULT_ALPHA = 0.1  # --alpha / --beta when not given (mammoth's seq-cifar10 values); 0 would drop the replay
    DEFAULT_BETA = 0.5

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        assert self.buffer is not None
        parts = [(inputs, self.current_task)]
        replay = not self.buffer.is_empty()
        if replay:
            buf_inputs1, _, buf_logits1, buf_tasks1 = self.buffer.get_data(self.args.minibatch_size, self.transform)
            buf_inputs2, buf_labels2, _, buf_tasks2 = self.buffer.get_data(self.args.minibatch_size, self.transform)
            parts += [(buf_inputs1, buf_tasks1), (buf_inputs2, buf_tasks2)]
        outputs = self.forward_parts(parts)
        loss = self.loss(outputs[0], labels)
        if replay:
            loss = loss + self.args.alpha * F.mse_loss(outputs[1], buf_logits1)
            loss = loss + self.args.beta * self.loss(outputs[2], buf_labels2)
        total = self.step(loss)
        self.buffer.add_data(
            not_aug_inputs, labels=labels, logits=outputs[0].detach(), task_labels=self.stream_tasks(labels)
        )
        return total
