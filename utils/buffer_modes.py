"""The replay buffer's modes and their rule, without torch: what the command line checks and the buffer builds
(``utils/buffer.py``)."""

from __future__ import annotations

BUFFER_MODES = ("reservoir", "ring")
"""``reservoir``: a uniform sample of the whole stream; ``ring``: ``buffer_size // n_tasks`` slots per task."""


def ring_size_problem(buffer_size: int, n_tasks: int) -> str | None:
    """What is wrong with a ring buffer of ``buffer_size`` for ``n_tasks`` tasks (every task needs a slot), if any."""
    if buffer_size < n_tasks:
        return f"is smaller than the {n_tasks} tasks of the ring buffer (one slot per task at least)"
    return None
