"""Run the AdaB²N paper's experiment grid: ``python run.py [--datasets ...] [--launcher local|slurm]``.

Resumable (runs with a results file are skipped), on idle GPUs, CPU workers or Slurm; ``python run.py --report``
writes the paper's tables and plots. The logic lives in the ``utils/experiments/`` package (``cli.py`` first).
"""

from __future__ import annotations

import sys

from normcl.utils.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
