"""Foundations that every layer of the project builds on: registries, user errors, atomic writes."""

from normcl import require_package_name

require_package_name(__name__, __file__)
