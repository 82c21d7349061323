"""Bridges to other continual-learning libraries; each module imports its library, an optional extra of the project
(``pip install -e ".[avalanche]"`` for ``integrations/avalanche.py``)."""

from normcl import require_package_name

require_package_name(__name__, __file__)
