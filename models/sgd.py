"""Fine-tuning with plain SGD: the lower bound, forgets everything but the last task."""

from torch import Tensor

from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel


@MODELS.register("sgd")
class Sgd(ContinualModel):
    STACKS = True

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        (outputs,) = self.forward_parts([(inputs, self.current_task)])
        return self.step(self.loss(outputs, labels))
