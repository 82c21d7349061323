"""``python -m utils.report RESULTS_DIR [--out DIR] [--no_plots]``: the paper's tables and plots from results files.

The command stays at this path; the report itself is :mod:`normcl.utils.experiments.report`.
"""

import sys

from normcl.utils.experiments.report import main

if __name__ == "__main__":
    sys.exit(main())
