"""Checkpoints for exact resume (``--checkpoint_every``, ``--resume``).

A checkpoint holds everything the rest of a run depends on: the model (the
network with every normalisation layer's buffers, AdaB²N's counter and η
included, and the model's own state with its task index), the optimiser, the
replay buffer, the RNG states of Python, NumPy and torch (CPU and CUDA), the
position in the current task's stream (epoch, batch and the epoch's shuffled
order) and the results so far. Resuming from it replays the remaining steps bit for bit on the CPU.

Files are written atomically (temporary file, then rename) and read with
``torch.load(..., weights_only=True)``: a checkpoint can hold only tensors and
plain containers, never code. A checkpoint from another configuration or
format version is refused with a message naming the differences.
"""

from __future__ import annotations

import io
import random
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normcl.utils.core.atomic import atomic_write_bytes
from normcl.utils.core.errors import UserError
from normcl.utils.parser import flag_roles

CHECKPOINT_VERSION = 2
"""2: every run is a stack (issue 23): one entry per member for the arguments, history, generator and optimiser. A
version-1 checkpoint is refused by name (its run resumes with the code that wrote it)."""


def resume_free_args() -> frozenset[str]:
    """The flags that may change between an interrupted run and its resumption (declared so with the flag: they
    change no number)."""
    return frozenset(dest for dest, roles in flag_roles().items() if roles.resume_free)


def comparable_args(args: Namespace) -> dict[str, Any]:
    free = resume_free_args()
    return {k: v for k, v in sorted(vars(args).items()) if k not in free}


def get_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos},
        "numpy_gauss": [has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    has_gauss, gauss_value = state["numpy_gauss"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], has_gauss, gauss_value))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format version) atomically."""
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def stack_members(path: Path) -> list[str] | None:
    """The ``--run_name`` of each member of the stack whose checkpoint ``path`` is; ``None`` if it cannot be read."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)["args"]
        return [str(args["run_name"]) for args in saved]
    except Exception:  # unreadable or not a stack's: the stack that finds it reports it when it resumes
        return None


def load_checkpoint(path: Path, runs: list[Namespace], device: torch.device) -> dict[str, Any]:
    """Read a checkpoint and check that it belongs to the runs of a stack (one alone) with the same configuration."""
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}; run without --resume to start from scratch")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # any unreadable file gets the same advice
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}); delete it to start over") from None
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        found = payload.get("version") if isinstance(payload, dict) else None
        raise UserError(
            f"checkpoint {path} has format version {found}, this code writes {CHECKPOINT_VERSION}; "
            "delete it to start over or resume with the code that wrote it"
        )
    saved_runs = payload["args"]
    if not isinstance(saved_runs, list) or len(saved_runs) != len(runs):
        raise UserError(f"checkpoint {path} was written by another number of runs; resume with the same --member flags")
    for run, saved_args in zip(runs, saved_runs, strict=True):
        saved = {k: v for k, v in saved_args.items() if k not in resume_free_args()}
        current = comparable_args(run)
        diff = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        if diff:
            shown = ", ".join(f"--{k} {saved.get(k)!r} (now {current.get(k)!r})" for k in diff[:6])
            raise UserError(
                f"checkpoint {path} was written by a run with other arguments: {shown}; "
                "resume with the same arguments or pick another --run_name"
            )
    return payload
