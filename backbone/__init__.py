"""Feature extractors + classifier heads, created by name."""

from normcl.utils.core.registry import Registry

BACKBONES: Registry = Registry("backbone", __name__)
