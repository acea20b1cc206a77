import pytest
import torch

import flashinfer
import reference as ref
from helpers import assert_matches, poison_allocator, poisoned_like, strided_rows

NAMES = ["silu_and_mul", "gelu_and_mul", "gelu_tanh_and_mul"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 3, 64, 100, 4096, 14336])
@pytest.mark.parametrize("rows", [0, 1, 7])
def test_act_and_mul(device, name, dtype, d, rows):
    x = torch.randn(rows, 2 * d, dtype=dtype, device=device) * 3
    fn = getattr(flashinfer, name)
    expect, base = ref.act_and_mul(name, x), ref.act_and_mul(name, x, dtype=dtype)
    out = poisoned_like(x, (rows, d))
    assert fn(x, out=out) is out
    assert_matches(out, expect, base, f"{name} out=")
    poison_allocator(device, out.numel() * out.element_size())
    assert_matches(fn(x), expect, base, name)


def _check_rows(name, rows, d, layout, device):
    if layout is None:
        x = torch.randn(rows, 2 * d, dtype=torch.bfloat16, device=device) * 3
    else:
        x = strided_rows((rows, 2 * d), torch.bfloat16, device, layout)
    out = poisoned_like(x, (rows, d))
    getattr(flashinfer, name)(x, out=out)
    assert_matches(out, ref.act_and_mul(name, x), ref.act_and_mul(name, x, dtype=torch.bfloat16), name)


# Many rows, one vector per thread: a row whose last chunk is partial (4000 = 3 x 1024 + 928 elements), rows off
# the 16-byte grid (one element a vector), more rows than one grid dimension holds (65535: blocks stride over rows).
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rows,d,layout", [(300, 14336, None), (1100, 4000, None), (1050, 4000, "unaligned"),
                                           (70000, 24, None), (70000, 64, None)])
def test_act_and_mul_large(device, name, rows, d, layout):
    _check_rows(name, rows, d, layout, device)


# Calls of >= 2**26 output elements take the CUDA kernel's two-vectors-per-thread path: full chunks, a partial last
# chunk (4000 = 2048 + 1952 elements), unaligned rows, rows past 65535 whose second vectors all lie past the row.
@pytest.mark.gpu
@pytest.mark.parametrize("name,rows,d,layout", [
    ("silu_and_mul", 16385, 4096, None), ("gelu_and_mul", 16800, 4000, None),
    ("gelu_tanh_and_mul", 16800, 4000, "unaligned"), ("silu_and_mul", 70000, 1000, None)])
def test_act_and_mul_wide(name, rows, d, layout):
    assert rows * d >= 1 << 26
    _check_rows(name, rows, d, layout, "cuda")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["row_stride", "unaligned", "heads"])
def test_act_and_mul_strided(device, name, layout):
    shape = (5, 3, 256) if layout == "heads" else (9, 2 * 1024)
    x = strided_rows(shape, torch.bfloat16, device, layout)
    out = getattr(flashinfer, name)(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    assert_matches(out, ref.act_and_mul(name, x), ref.act_and_mul(name, x, dtype=torch.bfloat16), name)


def test_act_and_mul_strided_out(device):
    x = torch.randn(4, 3, 512, dtype=torch.float16, device=device)
    wide = torch.full((4, 3, 300), float("nan"), dtype=torch.float16, device=device)
    out = wide[..., 10:266]
    flashinfer.silu_and_mul(x, out=out)
    assert_matches(out, ref.act_and_mul("silu_and_mul", x), ref.act_and_mul("silu_and_mul", x, dtype=torch.float16))
    assert torch.isnan(wide[..., :10]).all() and torch.isnan(wide[..., 266:]).all()
