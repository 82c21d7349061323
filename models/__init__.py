"""Continual-learning methods (``--model``), created by name."""

from normcl import require_package_name
from normcl.utils.core.registry import Registry

require_package_name(__name__, __file__)

MODELS: Registry = Registry("model", __name__)
