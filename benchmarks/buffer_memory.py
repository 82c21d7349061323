"""Bytes held by a full replay buffer, against float32 storage of the same images.

The buffer keeps images as the datasets give them, uint8, and augments/normalises them on the device only when
a batch is drawn; this prints, for each dataset shape and buffer size, the bytes of the stored images, what
float32 storage would take, and the bytes of every tensor of the buffer (labels, logits, task ids included).

    python benchmarks/buffer_memory.py
"""

from __future__ import annotations

import json

import torch

from normcl.datasets import get_dataset_class
from normcl.utils.buffer import Buffer


def main() -> None:
    for name in ("seq-fmnist", "seq-cifar10", "seq-cifar100", "seq-miniimg"):
        cls = get_dataset_class(name)
        for size in (500, 2000):
            buffer = Buffer(size, torch.device("cpu"), "reservoir", cls.N_TASKS)
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
            print(json.dumps(row))


if __name__ == "__main__":
    main()
