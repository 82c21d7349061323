"""Shared pieces of the models: the ``ContinualModel`` base and the normalisation layers, whose registry (``--nl``) is
here, without torch, for the command line to name them before any layer is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from normcl import require_package_name
from normcl.utils.core.registry import Registry

if TYPE_CHECKING:
    from normcl.models.utils.norms import NormSpec

require_package_name(__name__, __file__)

NORMS: Registry[NormSpec] = Registry("normalization layer", __name__)
"""Normalisation layers by name: each module of this package registers its own (``norms.register_norm``)."""
