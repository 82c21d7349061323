"""Tests of the replay buffer: reservoir and ring semantics, dtypes, sampling, checkpoints, errors."""

import io

import pytest
import torch

from normcl.utils.buffer import Buffer

CPU = torch.device("cpu")


def _stream(buffer: Buffer, ids: torch.Tensor, batch_sizes: list[int], task: int | None = None) -> None:
    """Add `ids` to the buffer as examples, in consecutive batches of the given sizes."""
    assert sum(batch_sizes) == len(ids)
    start = 0
    for size in batch_sizes:
        buffer.add_data(ids[start : start + size], task=task)
        start += size


def _stored_ids(buffer: Buffer) -> list[int]:
    return buffer.examples[: buffer.buffer_size].tolist()


# ---------------------------------------------------------------- reservoir


def test_filling_phase_stores_first_samples_in_order():
    buffer = Buffer(10, CPU)
    assert buffer.is_empty() and len(buffer) == 0
    ids = torch.arange(100, 110)
    buffer.add_data(ids[:3])
    assert len(buffer) == 3
    buffer.add_data(ids[3:6])
    buffer.add_data(ids[6:])
    assert len(buffer) == 10 and buffer.num_seen_examples == 10
    assert _stored_ids(buffer) == list(range(100, 110))
    assert sorted(buffer.get_data(10)[0].tolist()) == ids.tolist()


def test_batch_straddling_the_end_of_filling():
    torch.manual_seed(0)
    buffer = Buffer(10, CPU)
    buffer.add_data(torch.arange(8))
    buffer.add_data(torch.arange(8, 20))
    stored = _stored_ids(buffer)
    assert len(buffer) == 10 and buffer.num_seen_examples == 20
    assert len(set(stored)) == 10 and set(stored) <= set(range(20))
    # Slots 0..7 hold either their filling sample or a later one of the stream.
    assert all(value == slot or value >= 8 for slot, value in enumerate(stored))


def test_collisions_in_a_batch_are_won_by_the_later_sample(monkeypatch):
    buffer = Buffer(4, CPU)
    buffer.add_data(torch.arange(4))
    draws = iter([torch.tensor([1, 1, 1]), torch.tensor([2, 9, 2, 0])])
    monkeypatch.setattr(buffer, "_draw_slots", lambda n: next(draws))
    buffer.add_data(torch.tensor([10, 11, 12]))
    assert _stored_ids(buffer) == [0, 12, 2, 3]
    buffer.add_data(torch.tensor([20, 21, 22, 23]))  # 21 drew 9 >= size: discarded
    assert _stored_ids(buffer) == [23, 12, 22, 3]
    assert buffer.num_seen_examples == 11


def test_vectorized_insertion_matches_sequential_reservoir(monkeypatch):
    """Same random draws, processed one sample at a time by the textbook algorithm, give the same buffer."""
    torch.manual_seed(1)
    size = 20
    buffer = Buffer(size, CPU)
    recorded: dict[int, int] = {}
    draw = buffer._draw_slots

    def recording_draw(n: torch.Tensor) -> torch.Tensor:
        r = draw(n)
        recorded.update(zip(n.tolist(), r.tolist(), strict=True))
        return r

    monkeypatch.setattr(buffer, "_draw_slots", recording_draw)
    batch_sizes = [7, 9, 5, 40, 1, 10, 10, 33, 2, 60, 23]
    ids = torch.arange(1000, 1000 + sum(batch_sizes))
    _stream(buffer, ids, batch_sizes)

    reference = [None] * size
    collisions = 0
    start = 0
    for batch in batch_sizes:
        written_in_batch = set()
        for n in range(start, start + batch):
            slot = n if n < size else recorded[n]
            if slot < size:
                collisions += slot in written_in_batch
                written_in_batch.add(slot)
                reference[slot] = 1000 + n
        start += batch
    assert collisions > 0, "the scenario must exercise same-batch collisions"
    assert _stored_ids(buffer) == reference
    assert buffer.num_seen_examples == len(ids) and len(buffer) == size


def test_draws_are_uniform_on_zero_to_n():
    torch.manual_seed(2)
    buffer = Buffer(3, CPU)
    trials = 50_000
    r = buffer._draw_slots(torch.full((trials,), 4))
    counts = torch.bincount(r, minlength=5)
    assert counts.numel() == 5  # never above n
    std = (trials * 0.2 * 0.8) ** 0.5
    assert (counts - trials * 0.2).abs().max() < 5 * std
    n = torch.arange(0, 3000)
    r = buffer._draw_slots(n)
    assert bool((r >= 0).all()) and bool((r <= n).all())


class _EarliestWins(Buffer):
    """Biased variant: on a same-batch collision the earlier sample wins."""

    def _resolve_collisions(self, slots: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(slots.shape[0])
        winner = torch.full((self.buffer_size + 1,), slots.shape[0], dtype=torch.int64)
        winner.scatter_reduce_(0, slots, positions, reduce="amin")
        return torch.where(winner[slots] == positions, slots, self.buffer_size)


class _KeepFirst(Buffer):
    """Biased variant: keeps the first `buffer_size` samples forever."""

    def _reservoir_slots(self, batch: int) -> torch.Tensor:
        n = torch.arange(self.num_seen_examples, self.num_seen_examples + batch)
        return torch.where(n < self.buffer_size, n, self.buffer_size)


def _uniformity_stats(cls: type[Buffer], batch: int, runs: int = 300) -> tuple[float, float]:
    """Stream ids 0..999 into a buffer of 100 for `runs` seeds; return (max |z|, chi-square) of inclusion counts.

    Each position is kept with probability p = 0.1 in every run, so its count is
    Binomial(runs, p): z = (count - runs p) / sqrt(runs p (1 - p)); the sum of
    the 1000 squared z has mean 1000 and std about sqrt(2000) = 45.
    """
    stream, size, p = 1000, 100, 0.1
    counts = torch.zeros(stream)
    ids = torch.arange(stream)
    for seed in range(runs):
        torch.manual_seed(seed)
        buffer = cls(size, CPU)
        _stream(buffer, ids, [batch] * (stream // batch))
        counts[buffer.examples[:size]] += 1
    z = (counts - runs * p) / (runs * p * (1 - p)) ** 0.5
    return float(z.abs().max()), float((z**2).sum())


MAX_Z = 5.0  # P(|z| > 5) = 6e-7 per position
MAX_CHI2 = 1000 + 5 * 2000**0.5


@pytest.mark.slow
@pytest.mark.parametrize("batch", [10, 100])
def test_reservoir_keeps_a_uniform_sample(batch):
    max_z, chi2 = _uniformity_stats(Buffer, batch)
    assert max_z < MAX_Z
    assert chi2 < MAX_CHI2


def test_uniformity_check_rejects_biased_buffers():
    max_z, chi2 = _uniformity_stats(_EarliestWins, batch=100)
    assert max_z > MAX_Z and chi2 > MAX_CHI2
    max_z, chi2 = _uniformity_stats(_KeepFirst, batch=100, runs=30)
    assert max_z > MAX_Z and chi2 > MAX_CHI2


# --------------------------------------------------------------------- ring


def test_ring_keeps_the_newest_samples_of_each_task():
    torch.manual_seed(3)
    buffer = Buffer(50, CPU, mode="ring", n_tasks=5)
    assert buffer.portion == 10
    for task in range(5):
        ids = torch.arange(37) + 1000 * task + 1  # never 0, the value of a slot not yet written
        buffer.add_data(ids[:7], task=task)
        filled_before = 10 * task
        assert len(buffer) == filled_before + 7
        # Only filled slots are sampled: the newest 10 of each earlier task and the first 7 of this one.
        earlier = [1000 * old + 1 + j for old in range(task) for j in range(27, 37)]
        assert sorted(buffer.get_data(100)[0].tolist()) == sorted(earlier + ids[:7].tolist())
        _stream(buffer, ids[7:], [5] * 6, task=task)
        assert len(buffer) == filled_before + 10
    for task in range(5):
        for j in range(27, 37):
            assert int(buffer.examples[10 * task + j % 10]) == 1000 * task + j + 1
    assert buffer.num_seen_examples == 5 * 37 and buffer.task_seen == [37] * 5


def test_ring_batch_larger_than_portion_keeps_the_last_samples():
    buffer = Buffer(10, CPU, mode="ring", n_tasks=2)
    buffer.add_data(torch.arange(3), task=0)
    buffer.add_data(torch.arange(100, 113), task=0)  # 13 samples into a portion of 5, ring position 3 onwards
    assert _stored_ids(buffer)[:5] == [112, 108, 109, 110, 111]
    assert len(buffer) == 5


def test_ring_never_samples_unused_slots():
    torch.manual_seed(4)
    buffer = Buffer(53, CPU, mode="ring", n_tasks=5)  # 3 slots left over, holding 0 (never written)
    for task in range(5):
        buffer.add_data(torch.arange(1, 31), task=task)
    assert len(buffer) == 50
    for _ in range(20):
        assert sorted(buffer.get_data(50)[0].tolist()) == sorted(list(range(21, 31)) * 5)
    with pytest.raises(ValueError, match=r"tasks 0 \.\. 4; add_data got task=5"):
        buffer.add_data(torch.arange(3), task=5)
    with pytest.raises(ValueError, match="task=None"):
        buffer.add_data(torch.arange(3))


# ------------------------------------------------------- dtypes and sampling


def test_uint8_round_trip_and_transform():
    torch.manual_seed(5)
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    buffer = Buffer(20, CPU)
    buffer.add_data(images, labels=torch.arange(20))
    assert buffer.examples.dtype == torch.uint8 and buffer.examples.element_size() == 1
    stored = buffer.examples[:20]
    assert stored.dtype == torch.uint8 and torch.equal(stored, images)
    assert buffer.labels.dtype == torch.int64
    examples, labels = buffer.get_data(8, transform=lambda x: x.float() / 255)
    assert examples.dtype == torch.float32 and examples.shape == (8, 3, 8, 8)
    assert torch.equal(examples, images[labels].float() / 255)  # label i was stored with image i


def test_logits_and_task_labels_stay_aligned():
    torch.manual_seed(6)
    buffer = Buffer(30, CPU)
    for start in range(0, 300, 10):
        ids = torch.arange(start, start + 10)
        buffer.add_data(
            ids.float().unsqueeze(1),
            labels=ids % 7,
            logits=ids.double().unsqueeze(1) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
            task_labels=ids // 100,
        )
    assert buffer.logits.dtype == torch.float64, "the logits keep the network's dtype (float64 runs stay float64)"
    assert buffer.task_labels.dtype == torch.int64
    examples, labels, logits, task_labels = buffer.get_data(30)
    ids = examples[:, 0].long()
    assert sorted(ids.tolist()) == sorted(buffer.examples[:30, 0].long().tolist())
    assert torch.equal(labels, ids % 7)
    assert torch.equal(logits, ids.double().unsqueeze(1) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.equal(task_labels, ids // 100)


def test_get_data_returns_distinct_valid_indices_capped_by_len():
    torch.manual_seed(7)
    buffer = Buffer(10, CPU)
    buffer.add_data(torch.arange(7))
    (examples,) = buffer.get_data(100)
    assert sorted(examples.tolist()) == list(range(7))
    for start in range(7, 507, 10):
        buffer.add_data(torch.arange(start, start + 10))
        (sampled,) = buffer.get_data(6)
        stored = set(buffer.examples[: buffer.buffer_size].tolist())  # not the scratch row's rejected sample
        assert len(set(sampled.tolist())) == 6 and set(sampled.tolist()) <= stored
    assert len(buffer.get_data(0)[0]) == 0


def test_sampling_is_uniform_over_slots():
    torch.manual_seed(8)
    buffer = Buffer(10, CPU)
    buffer.add_data(torch.arange(10))
    trials = 2000
    counts = torch.zeros(10)
    for _ in range(trials):
        counts[buffer.get_data(3)[0]] += 1  # example i is in slot i
    p = 0.3
    assert (counts - trials * p).abs().max() < 5 * (trials * p * (1 - p)) ** 0.5


def test_empty_and_reuse():
    buffer = Buffer(5, CPU)
    buffer.add_data(torch.arange(5), labels=torch.arange(5))
    buffer.empty()
    assert buffer.is_empty() and buffer.examples is None and buffer.num_seen_examples == 0
    with pytest.raises(RuntimeError, match="empty"):
        buffer.get_data(1)
    buffer.add_data(torch.arange(3) + 50)
    assert len(buffer) == 3 and buffer.examples[:3].tolist() == [50, 51, 52]


def test_inconsistent_inputs_are_rejected():
    buffer = Buffer(5, CPU)
    buffer.add_data(torch.zeros(2, 3), labels=torch.zeros(2))
    with pytest.raises(ValueError, match="stores"):
        buffer.add_data(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape"):
        buffer.add_data(torch.zeros(2, 4), labels=torch.zeros(2))
    with pytest.raises(ValueError, match="rows"):
        buffer.add_data(torch.zeros(2, 3), labels=torch.zeros(3))
    assert buffer.num_seen_examples == 2


# --------------------------------------------------------------- checkpoint


def _round_trip(state: dict) -> dict:
    stream = io.BytesIO()
    torch.save(state, stream)
    stream.seek(0)
    return torch.load(stream, weights_only=True)


@pytest.mark.parametrize(("mode", "n_tasks"), [("reservoir", None), ("ring", 3)])
def test_state_dict_round_trip_continues_identically(mode, n_tasks):
    torch.manual_seed(9)
    original = Buffer(12, CPU, mode=mode, n_tasks=n_tasks)
    task = None if mode == "reservoir" else 0
    for start in range(0, 40, 8):
        ids = torch.arange(start, start + 8)
        original.add_data(ids.to(torch.uint8).view(8, 1, 1, 1), labels=ids, logits=ids.float().unsqueeze(1), task=task)
    restored = Buffer(12, CPU, mode=mode, n_tasks=n_tasks)
    restored.load_state_dict(_round_trip(original.state_dict()))
    assert len(restored) == len(original)
    for buffer in (original, restored):
        torch.manual_seed(10)
        new = torch.full((5, 1, 1, 1), 99, dtype=torch.uint8)
        buffer.add_data(new, labels=torch.arange(5), logits=torch.ones(5, 1), task=None if task is None else 1)
    torch.manual_seed(11)
    first = original.get_data(6)
    torch.manual_seed(11)
    second = restored.get_data(6)
    assert len(first) == len(second) == 3
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert original.state_dict().keys() == restored.state_dict().keys()
    for name in ("examples", "labels", "logits"):
        assert torch.equal(getattr(original, name)[:12], getattr(restored, name)[:12])
    assert restored.task_seen == original.task_seen
    assert restored.num_seen_examples == original.num_seen_examples


def test_loading_a_different_buffer_is_refused():
    state = Buffer(10, CPU).state_dict()
    with pytest.raises(ValueError, match="buffer_size"):
        Buffer(20, CPU).load_state_dict(state)
    with pytest.raises(ValueError, match="mode"):
        Buffer(10, CPU, mode="ring", n_tasks=2).load_state_dict(state)


def test_a_checkpoint_from_before_the_model_owned_the_task_index_loads():
    buffer = Buffer(10, CPU, mode="ring", n_tasks=2)
    buffer.add_data(torch.arange(4), task=1)
    restored = Buffer(10, CPU, mode="ring", n_tasks=2)
    restored.load_state_dict({**buffer.state_dict(), "current_task": 1})
    assert restored.task_seen == [0, 4] and len(restored) == 4


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 0}, "positive"),
        ({"buffer_size": -5}, "positive"),
        ({"buffer_size": 3, "mode": "ring", "n_tasks": 5}, "buffer_size 3 is smaller than the 5 tasks"),
        ({"buffer_size": 10, "mode": "ring"}, "number of tasks"),
        ({"buffer_size": 10, "mode": "fifo"}, "reservoir, ring"),
    ],
)
def test_bad_configuration_is_refused_in_the_buffers_own_terms(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Buffer(device=CPU, **kwargs)


# --------------------------------------------------------------------- cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("mode", "n_tasks"), [("reservoir", None), ("ring", 4)])
def test_no_host_sync_on_cuda(mode, n_tasks):
    device = torch.device("cuda")
    buffer = Buffer(64, device, mode=mode, n_tasks=n_tasks)
    batches = [
        (torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, device=device), torch.arange(10, device=device))
        for _ in range(30)
    ]
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, (images, labels) in enumerate(batches):
            buffer.add_data(images, labels=labels, logits=labels.float().unsqueeze(1), task=step // 8)
            buffer.get_data(10, transform=lambda x: x.float() / 255)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert len(buffer) == 64
