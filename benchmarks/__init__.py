"""Measurements of the framework's speed and memory (``BENCHMARKS.md``), each a script of its own."""

from normcl import require_package_name

require_package_name(__name__, __file__)
