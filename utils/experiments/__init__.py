"""The experiment tooling: ``run.py``'s grid launcher and the report of its results.

Launcher and report share one vocabulary (:mod:`.methods`) and one AdaB²N selection rule (:mod:`.selection`), so
the runs that ``run.py`` starts land in the rows the report means, and ``--tune validation`` runs the configuration
that the tables then report.

* launcher: :mod:`.cli` (``run.py``'s flags and main) → :mod:`.grid` (the runs) → :mod:`.tuning` (``--tune
  validation``) → :mod:`.scheduler` (GPUs / CPU workers) or :mod:`.slurm` (submitit), both through
  :mod:`.processes` (locks, child processes, the summary);
* report: :mod:`.records` (results files) → :mod:`.tables` (cells, gains, drift) → :mod:`.formats` (Markdown,
  CSV, LaTeX) and :mod:`.plots`, written by :mod:`.report`; :mod:`.results_page` publishes them.
"""

from normcl import require_package_name

require_package_name(__name__, __file__)
