"""Continual-learning methods (``--model``), created by name."""

from normcl.utils.core.registry import Registry

MODELS: Registry = Registry("model", __name__)
