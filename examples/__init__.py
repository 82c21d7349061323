"""Examples shipped with the package: ``python -m normcl.examples.avalanche_adab2n`` runs the Avalanche example
without a clone (``pip install "normcl[avalanche]"``). The quickstart notebook stays in the clone."""

from normcl import require_package_name

require_package_name(__name__, __file__)
