"""normcl: normalization layers in continual learning — AdaB²N (Lyu et al., NeurIPS 2023) and baselines, mammoth-style.

The package is the repository's root: ``normcl.models``, ``normcl.utils``, ``normcl.datasets``, ``normcl.backbone``,
``normcl.integrations``, ``normcl.benchmarks``.
"""
