"""Replay memory of the rehearsal methods (ER, DER, DER++, ER-ACE).

Online continual learning runs thousands of steps of batch 10, each with one
`add_data` and one `get_data`, so the buffer is built for speed:

* Everything lives on the training device as preallocated tensors; insertion
  and sampling are a handful of vectorized kernels, with no Python loop over
  samples.
* No host synchronisation in `add_data` / `get_data`: no `.item()`,
  `.tolist()`, `.nonzero()`, boolean-mask indexing or `torch.unique` on
  device tensors. All control flow depends only on Python-int counters
  (`num_seen_examples`, per-task fill counts), so the CPU never waits for the
  GPU and kernel launches stay queued.
* Examples are stored exactly as given. The framework passes uint8 images
  (N, C, H, W), which take a quarter of the memory of float32; the
  conversion to float happens in the `transform` applied to sampled batches.
* Each tensor has one extra *scratch row* at index `buffer_size`. Samples
  that must not be written (rejected by the reservoir, or overwritten by a
  later sample of the same batch) are sent there by `index_copy_`, which
  replaces boolean masking (a host sync). The scratch row is never sampled.

Two modes:

* ``reservoir``: reservoir sampling over the whole stream; the k-th sample of
  the stream is kept with probability ``buffer_size / (k + 1)``, so the buffer
  is a uniform sample of everything seen.
* ``ring``: ``buffer_size // n_tasks`` slots per task, each a FIFO ring of that
  task's newest samples. The model, which owns the task index, names the task of
  every batch it adds (``add_data(..., task=t)``).
"""

from collections.abc import Callable

import torch
from torch import Tensor

from normcl.utils.buffer_modes import BUFFER_MODES, ring_size_problem

# Stored attributes, in the order `get_data` returns them, and their dtype
# (None: keep the dtype of the first batch).
_ATTRIBUTES: dict[str, torch.dtype | None] = {
    "examples": None,
    "labels": torch.int64,
    "logits": None,  # the network's dtype: a float64 run's replayed logits are not rounded to float32
    "task_labels": torch.int64,
}

# Upper bound of the raw integers drawn for reservoir positions. Reducing them
# modulo n + 1 has a bias below n / 2**62, i.e. none in practice, and works with
# int64 only (float64 is missing on some devices, float32 too coarse).
_DRAW_RANGE = 2**62


class Buffer:
    """Fixed-size replay memory on the training device (see the module docstring)."""

    def __init__(
        self,
        buffer_size: int,
        device: torch.device | str,
        mode: str = "reservoir",
        n_tasks: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if buffer_size <= 0:
            raise ValueError(f"buffer_size must be positive, got {buffer_size}")
        if mode not in BUFFER_MODES:
            raise ValueError(f"unknown buffer mode {mode!r}; valid modes: {', '.join(BUFFER_MODES)}")
        if mode == "ring":
            if n_tasks is None or n_tasks <= 0:
                raise ValueError(f"the ring buffer needs the number of tasks (a positive int), got {n_tasks}")
            problem = ring_size_problem(buffer_size, n_tasks)
            if problem is not None:
                raise ValueError(f"buffer_size {buffer_size} {problem}")
        self.buffer_size = buffer_size
        self.device = torch.device(device)
        self.generator = generator  # None: torch's default generator (a run alone); a stacked run's member: its own
        self.mode = mode
        self.n_tasks = n_tasks
        self.portion = buffer_size // n_tasks if mode == "ring" and n_tasks else buffer_size
        self.num_seen_examples = 0
        self.task_seen: list[int] = [0] * (n_tasks if mode == "ring" and n_tasks else 0)
        self.examples: Tensor | None = None
        self.labels: Tensor | None = None
        self.logits: Tensor | None = None
        self.task_labels: Tensor | None = None
        self._stored: tuple[str, ...] = ()
        self._winner: Tensor | None = None
        self._valid_slots: Tensor | None = None
        self._valid_key: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ size

    def __len__(self) -> int:
        """Number of valid samples, from Python counters only (no sync)."""
        if self.mode == "ring":
            return sum(min(seen, self.portion) for seen in self.task_seen)
        return min(self.num_seen_examples, self.buffer_size)

    def is_empty(self) -> bool:
        """True when there is nothing to replay yet."""
        return len(self) == 0

    def empty(self) -> None:
        """Drop all samples and free the storage."""
        for name in _ATTRIBUTES:
            setattr(self, name, None)
        self._stored = ()
        self._winner = None
        self._valid_slots = None
        self._valid_key = None
        self.num_seen_examples = 0
        self.task_seen = [0] * len(self.task_seen)

    # ---------------------------------------------------------------- insert

    def add_data(
        self,
        examples: Tensor,
        labels: Tensor | None = None,
        logits: Tensor | None = None,
        task_labels: Tensor | None = None,
        task: int | None = None,
    ) -> None:
        """Insert a batch (reservoir or ring rule) with a few vectorized kernels and no host sync.

        ``task`` is the task the batch belongs to (required in ring mode: it picks the ring). Pass tensors already
        on the device: a copy from pageable host memory blocks the host.
        """
        batch = examples.shape[0]
        given = {"examples": examples, "labels": labels, "logits": logits, "task_labels": task_labels}
        values = {name: self._prepare(name, value) for name, value in given.items() if value is not None}
        for name, value in values.items():
            if value.shape[0] != batch:
                raise ValueError(f"{name} has {value.shape[0]} rows but examples has {batch}")
        if self.mode == "ring" and (task is None or not 0 <= task < len(self.task_seen)):
            raise ValueError(f"the ring buffer holds tasks 0 .. {len(self.task_seen) - 1}; add_data got task={task}")
        if batch == 0:
            return
        if self.examples is None:
            self._allocate(values)
        elif tuple(values) != self._stored:
            raise ValueError(f"add_data got {tuple(values)} but the buffer stores {self._stored}")

        for name, value in values.items():
            expected = getattr(self, name).shape[1:]
            if value.shape[1:] != expected:
                raise ValueError(f"{name} has shape {tuple(value.shape[1:])} per sample, expected {tuple(expected)}")

        ring = task if self.mode == "ring" else None  # checked above: a task of the ring in ring mode
        slots = self._reservoir_slots(batch) if ring is None else self._ring_slots(batch, ring)
        for name, value in values.items():
            getattr(self, name).index_copy_(0, slots, value)

        self.num_seen_examples += batch
        if ring is not None:
            self.task_seen[ring] += batch

    def _prepare(self, name: str, value: Tensor) -> Tensor:
        """Move to the device with the stored dtype; detached so the buffer never holds a graph."""
        dtype = _ATTRIBUTES[name]
        return value.detach().to(self.device, dtype) if dtype is not None else value.detach().to(self.device)

    def _allocate(self, values: dict[str, Tensor]) -> None:
        """Allocate `buffer_size + 1` rows (the last one is the scratch row) from the first batch."""
        for name, value in values.items():
            shape = (self.buffer_size + 1, *value.shape[1:])
            setattr(self, name, torch.zeros(shape, dtype=value.dtype, device=self.device))
        self._stored = tuple(values)

    def _draw_slots(self, n: Tensor) -> Tensor:
        """Draw r uniform in [0, n] for every entry of `n` (global stream positions), on the device."""
        raw = torch.randint(0, _DRAW_RANGE, n.shape, dtype=torch.int64, device=self.device, generator=self.generator)
        return raw % (n + 1)

    def _reservoir_slots(self, batch: int) -> Tensor:
        """Target row of each sample under reservoir sampling; rejected or overwritten samples go to scratch."""
        start = self.num_seen_examples
        n = torch.arange(start, start + batch, dtype=torch.int64, device=self.device)
        if start + batch <= self.buffer_size:
            return n  # filling phase: slot n, no draws, no collisions
        draws = self._draw_slots(n)
        slots = torch.where(n < self.buffer_size, n, draws)
        slots = torch.where(slots < self.buffer_size, slots, self.buffer_size)
        return self._resolve_collisions(slots)

    def _ring_slots(self, batch: int, task: int) -> Tensor:
        """Target row of each sample in ``task``'s FIFO ring."""
        seen = self.task_seen[task]
        offset = torch.arange(seen, seen + batch, dtype=torch.int64, device=self.device) % self.portion
        slots = offset + task * self.portion
        return slots if batch <= self.portion else self._resolve_collisions(slots)

    def _resolve_collisions(self, slots: Tensor) -> Tensor:
        """Send every sample that a later sample of the same batch overwrites to the scratch row.

        The sequential algorithm writes samples one by one, so the last writer
        of a slot wins. `scatter_reduce(amax)` of batch positions finds it
        without sorting, `unique` or any host sync.
        """
        if self._winner is None:
            self._winner = torch.empty(self.buffer_size + 1, dtype=torch.int64, device=self.device)
        winner = self._winner.fill_(-1)
        positions = torch.arange(slots.shape[0], dtype=torch.int64, device=self.device)
        winner.scatter_reduce_(0, slots, positions, reduce="amax")
        won = winner.index_select(0, slots) == positions
        return torch.where(won, slots, self.buffer_size)

    # ---------------------------------------------------------------- sample

    def get_data(self, size: int, transform: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, ...]:
        """Sample `min(size, len(self))` distinct stored samples uniformly, without replacement.

        Returns (examples, labels, logits, task_labels) restricted to the stored
        attributes. Draws from the buffer's generator (default: torch's global one, so `torch.manual_seed` makes
        it reproducible).
        """
        if size < 0:
            raise ValueError(f"cannot sample {size} examples")
        n_valid = len(self)
        if n_valid == 0:
            raise RuntimeError("cannot sample from an empty buffer; check is_empty() first")
        perm = torch.randperm(n_valid, device=self.device, generator=self.generator)[: min(size, n_valid)]
        index = perm if self.mode == "reservoir" else self._valid_slot_tensor().index_select(0, perm)
        return self._gather(index, transform)

    def _gather(self, index: Tensor, transform: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, ...]:
        """Copy the rows `index` of every stored attribute; the transform applies to examples only."""
        data = [getattr(self, name).index_select(0, index) for name in self._stored]
        if transform is not None:
            data[0] = transform(data[0])
        return tuple(data)

    def _valid_slot_tensor(self) -> Tensor:
        """Filled slots of the ring, as a cached device tensor rebuilt only when the fill counts change."""
        fills = tuple(min(seen, self.portion) for seen in self.task_seen)
        if self._valid_slots is None or self._valid_key != fills:
            # Built by device kernels: torch.tensor(list) would be a blocking host-to-device copy.
            parts = [
                torch.arange(task * self.portion, task * self.portion + fill, dtype=torch.int64, device=self.device)
                for task, fill in enumerate(fills)
            ]
            self._valid_slots = torch.cat(parts)
            self._valid_key = fills
        return self._valid_slots

    # ------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict:
        """Everything needed to continue exactly, as plain tensors/ints/strings/lists (loads with weights_only)."""
        return {
            "mode": self.mode,
            "buffer_size": self.buffer_size,
            "n_tasks": self.n_tasks,
            "num_seen_examples": self.num_seen_examples,
            "task_seen": list(self.task_seen),
            "tensors": {name: getattr(self, name)[: self.buffer_size].detach().cpu().clone() for name in self._stored},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; the buffer must have been built with the same mode, size and tasks."""
        expected = {"mode": self.mode, "buffer_size": self.buffer_size, "n_tasks": self.n_tasks}
        for key, value in expected.items():
            if state[key] != value:
                raise ValueError(f"the saved buffer has {key}={state[key]!r} but this buffer has {key}={value!r}")
        self.empty()
        self.num_seen_examples = int(state["num_seen_examples"])
        self.task_seen = [int(seen) for seen in state["task_seen"]]
        for name, saved in state["tensors"].items():
            if name not in _ATTRIBUTES:
                raise ValueError(f"the saved buffer stores an unknown attribute {name!r}")
            if saved.shape[0] != self.buffer_size:
                raise ValueError(f"the saved buffer's {name} has {saved.shape[0]} rows, not {self.buffer_size}")
            scratch = torch.zeros((1, *saved.shape[1:]), dtype=saved.dtype)
            setattr(self, name, torch.cat([saved, scratch]).to(self.device))
        self._stored = tuple(name for name in _ATTRIBUTES if name in state["tensors"])
