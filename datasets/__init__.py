"""Continual-learning benchmarks, created by name (``--dataset``)."""

from normcl.utils.core.registry import Registry

DATASETS: Registry = Registry("dataset", __name__)


def get_dataset_class(name: str) -> type:
    """Return the registered ``ContinualDataset`` subclass called ``name``."""
    return DATASETS.get(name)
