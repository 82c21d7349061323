"""ER-ACE (Caccia et al. 2022): asymmetric cross-entropy, stream logits masked to the classes at hand.

The mask follows mammoth's reference exactly: from the second task on, the
stream loss only sees the classes present in the batch plus every class from
the highest one seen so far upwards (unless that is the last class). It is
computed with tensor ops, without ``torch.unique`` and its host sync.
"""

import torch
from torch import Tensor

from normcl.models import MODELS
from normcl.models.utils.continual_model import ContinualModel


@MODELS.register("er_ace")
class ErAce(ContinualModel):
    STACKS = True
    USES_BUFFER = True
    NORM_LOSS_ONLY_WHEN_REPLAYING = True  # er_ace_ada.py: the first task (no replay yet) is cross-entropy alone

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        seen = torch.zeros(self.members.count, self.n_classes, dtype=torch.bool, device=self.device)
        self.register_buffer("seen_classes", seen)
        self._class_ids = torch.arange(self.n_classes, device=self.device)

    def _stream_mask(self, labels: Tensor) -> Tensor:
        """The classes the stream loss sees, each member's, ``[K, 1, classes]``."""
        present = torch.zeros_like(self.seen_classes).scatter_(-1, labels, True)
        self.seen_classes |= present
        max_seen = torch.where(self.seen_classes, self._class_ids, -1).max(-1, keepdim=True).values
        future = (self._class_ids >= max_seen) & (max_seen < self.n_classes - 1)
        return (present | future).unsqueeze(-2)

    def observe(self, inputs: Tensor, labels: Tensor, not_aug_inputs: Tensor) -> Tensor:
        assert self.buffer is not None
        mask = self._stream_mask(labels)
        parts = [(inputs, self.current_task)]
        replay = self.current_task > 0
        if replay:
            buf_inputs, buf_labels, buf_tasks = self.buffer.get_data(self.args.minibatch_size, self.transform)
            parts.append((buf_inputs, buf_tasks))
        outputs = self.forward_parts(parts)
        logits = outputs[0]
        if replay:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        loss = self.loss(logits, labels)
        if replay:
            loss = loss + self.loss(outputs[1], buf_labels)
        total = self.step(loss)
        self.remember(not_aug_inputs, labels)
        return total
