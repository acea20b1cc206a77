import pytest
import torch

import flashinfer  # noqa: F401
from op_samples import SAMPLES


FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
ALL_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# test_schema checks that no input was mutated by comparing each with torch.allclose, which torch does not
# implement for fp8 tensors; samples with fp8 inputs run the other three (their values are covered by the
# correctness tests of each op, and the same op's 16-bit samples run test_schema).
FP8_UTILS = ALL_UTILS[1:]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(device, name):
    op = getattr(torch.ops.flashinfer, name).default
    for args, kwargs in SAMPLES[name](device):
        fp8 = any(isinstance(a, torch.Tensor) and a.dtype in FP8 for a in args)
        torch.library.opcheck(op, args, kwargs, test_utils=FP8_UTILS if fp8 else ALL_UTILS)
