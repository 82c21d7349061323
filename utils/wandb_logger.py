"""Experiment tracking through the real wandb library.

Without an API key (no ``WANDB_API_KEY``, no ``wandb login`` entry in
``~/.netrc``) the run is logged in offline mode, with a message saying so and
how to upload it later, instead of an interactive login prompt.
``--nowand 1`` turns it off entirely.
"""

from __future__ import annotations

import netrc
import os
from argparse import Namespace
from pathlib import Path
from typing import Any


def wandb_api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc")).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


class WandbLogger:
    """Losses per step and accuracies per task, as the reference logs them; a no-op when disabled."""

    def __init__(self, args: Namespace) -> None:
        """A wandb run of the run ``args``: each of a process's runs (a stack's members) its own."""
        self.run = None
        if args.nowand:
            return
        import wandb

        mode = os.environ.get("WANDB_MODE")
        if mode is None:
            mode = "online" if wandb_api_key_configured() else "offline"
            if mode == "offline":
                print("wandb: no API key configured, logging offline (upload later with `wandb sync`)")
        Path(args.results_path).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=args.wandb_project,
            entity=args.wandb_entity,
            name=args.wandb_name or args.run_name,
            group=getattr(args, "wandb_group", None),
            config=vars(args),
            mode=mode,
            dir=args.results_path,
            # Each run of the process its own (a stack's members), and no console capture: it would copy every
            # member's output into each; the output is the process's (the terminal, the launcher's log).
            reinit="create_new",
            settings=wandb.Settings(console="off"),
        )

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def log_task(self, task: int, class_il: list[float], task_il: list[float], step: int) -> None:
        if self.run is None:
            return
        values: dict[str, Any] = {
            "RESULT_class_mean_accs": sum(class_il) / len(class_il),
            "RESULT_task_mean_accs": sum(task_il) / len(task_il),
            "task": task,
        }
        values.update({f"RESULT_class_acc_{i}": a for i, a in enumerate(class_il)})
        values.update({f"RESULT_task_acc_{i}": a for i, a in enumerate(task_il)})
        self.run.log(values, step=step)

    def log_final(self, final: dict[str, float | None]) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in final.items() if v is not None})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
