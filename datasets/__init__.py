"""Continual-learning benchmarks, created by name (``--dataset``)."""

from normcl import require_package_name
from normcl.utils.core.registry import Registry

require_package_name(__name__, __file__)

DATASETS: Registry = Registry("dataset", __name__)


def get_dataset_class(name: str) -> type:
    """Return the registered ``ContinualDataset`` subclass called ``name``."""
    return DATASETS.get(name)
