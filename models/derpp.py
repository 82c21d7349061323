"""DER++ (Buzzega et al. 2020): DER's logit replay plus cross-entropy on a second buffer draw."""

from torch import Tensor

from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel
from normcl.utils.core.options import Option, at_least


@MODELS.register("derpp")
class Derpp(ContinualModel):
    STACKS = True
    USES_BUFFER = True
    NORM_LOSS_ONLY_WHEN_REPLAYING = True  # derpp_ada.py: the first step (empty buffer) is the plain loss
    # mammoth's seq-cifar10 values when not given; 0 would drop the replay. Other models record 0.
    OPTIONS = (
        Option("--alpha", "weight of the logit-replay loss", type=float, default=0.1, check=at_least(0), inactive=0.0),
        Option("--beta", "weight of the label-replay loss", type=float, default=0.5, check=at_least(0), inactive=0.0),
    )

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
            loss = loss + self.args.alpha * self.mse(outputs[1], buf_logits1)
            loss = loss + self.args.beta * self.loss(outputs[2], buf_labels2)
        total = self.step(loss)
        self.remember(not_aug_inputs, labels, logits=outputs[0].detach())
        return total
