"""Bridges to other continual-learning libraries; each module imports its library, an optional extra of the project
(``pip install -e ".[avalanche]"`` for ``integrations/avalanche.py``)."""
