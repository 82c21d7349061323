"""Shared infrastructure: argument parsing, training loop, buffer, metrics, results."""

from normcl import require_package_name

require_package_name(__name__, __file__, runs_commands=True)
