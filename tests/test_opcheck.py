import pytest
import torch

import flashinfer  # noqa: F401
from op_samples import SAMPLES


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(device, name):
    op = getattr(torch.ops.flashinfer, name).default
    for args, kwargs in SAMPLES[name](device):
        torch.library.opcheck(op, args, kwargs)
