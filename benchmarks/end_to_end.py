"""Wall time and peak memory of full online Split Fashion-MNIST runs, with evaluation time per task.

Each configuration (default: er_ace and derpp, each with BN and AdaB²N) runs
``utils/main.py --dataset seq-fmnist --bs 10 --epochs 1 --buffer_size 500
--nf 20`` in its own process; its peak resident memory comes from the kernel
(``wait4``), its training and evaluation times from its results file.

Output: one JSON line per configuration, as it finishes, with ``model``, ``nl``, ``wall_s`` (the process, start-up
included), ``train_s``, ``eval_s_per_task`` (after each task), ``peak_rss_mb``, ``class_il`` (final average, %) and
``extra`` (the flags added), and the run's environment (``benchmarks/output.py``, ``ENVIRONMENT``, from its results
file); then the rows as a Markdown table on stderr.

    python benchmarks/end_to_end.py [--models er_ace derpp] [--nls BN AdaB2N] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from normcl.benchmarks.output import emit, parse, run_environment
from normcl.datasets import DATASETS
from normcl.utils.core.run_files import results_file

REPO = Path(__file__).resolve().parent.parent
DATASET = "seq-fmnist"
ADAB2N_FLAGS = ["--kappa", "0.4", "--lambd", "0.1"]
KEYS = ("model", "nl", "wall_s", "train_s", "eval_s_per_task", "peak_rss_mb", "class_il", "extra")
SMOKE = "--models er_ace --nls AdaB2N --nf 2 --buffer_size 20 --samples_per_class 10 --extra '--validation 1'"


def run_one(model: str, nl: str, a: argparse.Namespace, results: Path) -> dict:
    name = f"{model}_{nl}"
    cmd = [sys.executable, "-m", "utils.main", "--dataset", DATASET, "--model", model, "--nl", nl]
    cmd += ["--buffer_size", str(a.buffer_size), "--nf", str(a.nf), "--lr", "0.03", "--bs", "10", "--epochs", "1"]
    cmd += ["--seed", "0", "--nowand", "1", "--non_verbose", "1", "--results_path", str(results), "--run_name", name]
    cmd += ADAB2N_FLAGS if nl == "AdaB2N" else []
    cmd += ["--device", a.device] if a.device else []
    cmd += ["--num_threads", str(a.threads)] if a.threads else []
    cmd += ["--samples_per_class", str(a.samples_per_class)] if a.samples_per_class else []
    cmd += a.extra.split()
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:  # a pipe left unread would block a child that writes much
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            raise SystemExit(f"{name} failed: {stderr.read().decode()[-2000:]}")
    setting = DATASETS.get(DATASET).SETTING
    spec = argparse.Namespace(results_path=results, setting=setting, dataset=DATASET, model=model, run_name=name)
    data = json.loads(results_file(spec).read_text())
    timing = data["timing"]
    return {
        "model": model,
        "nl": nl,
        "wall_s": round(wall, 1),
        "train_s": round(sum(timing["train_seconds"]), 1),
        "eval_s_per_task": [round(s, 2) for s in timing["eval_seconds"]],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "class_il": round(data["final"]["class_il_avg"], 2),
        "extra": a.extra,
        **run_environment(data),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["er_ace", "derpp"])
    p.add_argument("--nls", nargs="+", default=["BN", "AdaB2N"])
    p.add_argument("--buffer_size", type=int, default=500)
    p.add_argument("--nf", type=int, default=20)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--samples_per_class", type=int, default=None, help="default: the full 6000 per class")
    p.add_argument("--extra", default="", help="more flags for every run, e.g. '--amp 1 --channels_last 1'")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    a = parse(parser(), SMOKE, argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            for nl in a.nls:
                rows.append(run_one(model, nl, a, Path(tmp)))
                emit(rows[-1])
    table = ["| model | norm | wall (s) | train (s) | eval per task (s) | peak RSS (MiB) | class-IL (%) |"]
    table.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        evals = ", ".join(f"{s:.2f}" for s in r["eval_s_per_task"])
        table.append(
            f"| {r['model']} | {r['nl']} | {r['wall_s']} | {r['train_s']} | {evals} | {r['peak_rss_mb']} | "
            f"{r['class_il']} |"
        )
    print("\n".join(table), file=sys.stderr)


if __name__ == "__main__":
    main()
