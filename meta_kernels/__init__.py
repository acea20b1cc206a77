"""Fake (meta) implementations of every torch.ops.flashinfer op, one module per family.

They give torch.compile, torch.export and FakeTensor the output metadata of each op without running it.
"""

from . import activation, cascade, decode, norm, page, prefill, rope, sampling  # noqa: F401  (registration happens on import)
