"""``python -m utils.results_page RESULTS_DIR REPORT_DIR PAGE --command "..."``: rewrite a results page's generated
part (``scripts/reproduce_fmnist.sh``).

The command stays at this path, which the published pages' markers name; the code is
:mod:`normcl.utils.experiments.results_page`.
"""

import sys

from normcl.utils.experiments.results_page import main

if __name__ == "__main__":
    sys.exit(main())
