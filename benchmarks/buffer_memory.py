"""Bytes held by a full replay buffer, against float32 storage of the same images.

The buffer keeps images as the datasets give them, uint8, and augments/normalises them on the device only when
a batch is drawn; this measures, for each dataset shape and buffer size, the bytes of the stored images, what
float32 storage would take, and the bytes of every tensor of the buffer (labels, logits, task ids included).

Output: one JSON line per dataset and buffer size with ``dataset``, ``buffer_size``, ``dtype`` (of the stored
images), ``image_bytes``, ``float32_image_bytes``, ``ratio`` (image / float32 bytes) and ``all_tensor_bytes``, and the
environment (``benchmarks/output.py``, ``ENVIRONMENT``).

    python benchmarks/buffer_memory.py [--datasets seq-fmnist seq-cifar10] [--sizes 500 2000]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from normcl.benchmarks.common import environment
from normcl.benchmarks.output import emit, parse
from normcl.datasets import get_dataset_class
from normcl.utils.buffer import Buffer

KEYS = ("dataset", "buffer_size", "dtype", "image_bytes", "float32_image_bytes", "ratio", "all_tensor_bytes")
SMOKE = "--datasets seq-fmnist --sizes 10"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["seq-fmnist", "seq-cifar10", "seq-cifar100", "seq-miniimg"])
    p.add_argument("--sizes", nargs="+", type=int, default=[500, 2000], help="buffer sizes")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    a = parse(parser(), SMOKE, argv)
    device = torch.device("cpu")
    where = environment(device)
    for name in a.datasets:
        cls = get_dataset_class(name)
        for size in a.sizes:
            buffer = Buffer(size, device, "reservoir", cls.N_TASKS)
            buffer.add_data(
                examples=torch.randint(0, 256, (size, *cls.SHAPE), dtype=torch.uint8),
                labels=torch.zeros(size, dtype=torch.long),
                logits=torch.zeros(size, cls.N_TASKS * cls.N_CLASSES_PER_TASK),
                task_labels=torch.zeros(size, dtype=torch.long),
            )
            images = buffer.examples.numel() * buffer.examples.element_size()
            tensors = [t for t in vars(buffer).values() if isinstance(t, torch.Tensor)]
            row = {
                "dataset": name,
                "buffer_size": size,
                "dtype": str(buffer.examples.dtype),
                "image_bytes": images,
                "float32_image_bytes": buffer.examples.numel() * 4,
                "ratio": images / (buffer.examples.numel() * 4),
                "all_tensor_bytes": sum(t.numel() * t.element_size() for t in tensors),
            }
            emit(row | where)


if __name__ == "__main__":
    main()
