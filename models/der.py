"""Dark Experience Replay (Buzzega et al. 2020): replay the logits the network gave each stored sample."""

from torch import Tensor

from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel
from normcl.utils.core.options import Option, at_least


@MODELS.register("der")
class Der(ContinualModel):
    STACKS = True
    USES_BUFFER = True
    NORM_LOSS_ONLY_WHEN_REPLAYING = True  # like the AdaB2N reference's replay methods
    # mammoth's seq-cifar10 value when not given; 0 would make DER plain SGD. Other models record 0.
    OPTIONS = (
        Option("--alpha", "weight of the logit-replay loss", type=float, default=0.3, check=at_least(0), inactive=0.0),
    )

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
            loss = loss + self.args.alpha * self.mse(outputs[1], buf_logits)
        total = self.step(loss)
        self.remember(not_aug_inputs, labels, logits=outputs[0].detach())
        return total
