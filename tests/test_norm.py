import pytest
import torch

import flashinfer
import reference as ref
from helpers import assert_matches, poison_allocator, poisoned_like, strided_rows

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# 1 and 7: tiny and odd (scalar path); 100: not a multiple of the vector width; 4096: LLM width;
# 8200: past the register cache for 16-bit types (re-read path); 16387: odd and long.
HIDDEN = [1, 7, 100, 4096, 8200, 16387]
ROWS = [0, 1, 5]


def RMS_GRID(test):
    """dtype x hidden x rows x (plain or Gemma) for the RMSNorm tests."""
    for name, values in (("gemma", [False, True]), ("rows", ROWS), ("hidden", HIDDEN), ("dtype", DTYPES)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def _x(rows, hidden, dtype, device, layout="contiguous"):
    return strided_rows((rows, hidden), dtype, device, layout)


@RMS_GRID
def test_rmsnorm(device, dtype, hidden, rows, gemma):
    x = _x(rows, hidden, dtype, device)
    w = torch.randn(hidden, dtype=dtype, device=device)
    fn = flashinfer.gemma_rmsnorm if gemma else flashinfer.rmsnorm
    out = poisoned_like(x)
    assert fn(x, w, 1e-6, out=out) is out
    expect = ref.rmsnorm(x, w, 1e-6, gemma)
    base = ref.rmsnorm(x, w, 1e-6, gemma, dtype=dtype)
    assert_matches(out, expect, base, "rmsnorm out=")
    poison_allocator(device, x.numel() * x.element_size())
    assert_matches(fn(x, w, 1e-6), expect, base, "rmsnorm")


@pytest.mark.parametrize("layout", ["row_stride", "unaligned", "heads"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rmsnorm_strided_input(device, layout, dtype):
    shape = (6, 4, 128) if layout == "heads" else (9, 4096)
    x = strided_rows(shape, dtype, device, layout)
    w = torch.randn(shape[-1], dtype=dtype, device=device)
    out = poisoned_like(x)
    flashinfer.rmsnorm(x, w, out=out)
    assert_matches(out, ref.rmsnorm(x, w), ref.rmsnorm(x, w, dtype=dtype), f"rmsnorm {layout}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rmsnorm_fp32_weight(device, dtype):
    x = _x(4, 512, dtype, device)
    w = torch.randn(512, dtype=torch.float32, device=device)
    assert_matches(flashinfer.rmsnorm(x, w), ref.rmsnorm(x, w), ref.rmsnorm(x, w.to(dtype), dtype=dtype))


@RMS_GRID
def test_fused_add_rmsnorm(device, dtype, hidden, rows, gemma):
    x = _x(rows, hidden, dtype, device)
    r = _x(rows, hidden, dtype, device)
    w = torch.randn(hidden, dtype=dtype, device=device)
    expect_x, expect_r = ref.fused_add_rmsnorm(x, r, w, 1e-6, gemma)
    base_x, base_r = ref.fused_add_rmsnorm(x, r, w, 1e-6, gemma, dtype=dtype)
    fn = flashinfer.gemma_fused_add_rmsnorm if gemma else flashinfer.fused_add_rmsnorm
    assert fn(x, r, w, 1e-6) is None
    assert_matches(r, expect_r, base_r, "residual")
    assert_matches(x, expect_x, base_x, "normed input")


@pytest.mark.parametrize("layout", ["row_stride", "unaligned", "heads"])
def test_fused_add_rmsnorm_strided_in_place(device, layout):
    shape = (6, 4, 128) if layout == "heads" else (9, 2048)
    x = strided_rows(shape, torch.bfloat16, device, layout)
    r = strided_rows(shape, torch.bfloat16, device, layout)
    x_base, r_base = x._base, r._base
    x_outside = x_base.clone() if x_base is not None else None
    w = torch.randn(shape[-1], dtype=torch.bfloat16, device=device)
    expect_x, expect_r = ref.fused_add_rmsnorm(x, r, w)
    base_x, base_r = ref.fused_add_rmsnorm(x, r, w, dtype=torch.bfloat16)
    flashinfer.fused_add_rmsnorm(x, r, w)
    assert_matches(x, expect_x, base_x, "normed input")
    assert_matches(r, expect_r, base_r, "residual")
    # Elements of the underlying buffer outside the view are untouched.
    outside = torch.ones_like(x_base, dtype=torch.bool)
    outside.as_strided(x.shape, x.stride(), x.storage_offset()).fill_(False)
    assert torch.equal(x_base[outside], x_outside[outside])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1, 100, 4096, 8200])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("param_dtype", ["input", "float32"])
def test_layernorm(device, dtype, hidden, rows, param_dtype):
    # A large mean against a small spread checks the two-pass variance.
    x = (_x(rows, hidden, torch.float32, device) + 3).to(dtype)
    pdt = dtype if param_dtype == "input" else torch.float32
    g = torch.randn(hidden, dtype=pdt, device=device)
    b = torch.randn(hidden, dtype=pdt, device=device)
    poison_allocator(device, x.numel() * x.element_size())
    out = flashinfer.layernorm(x, g, b, 1e-5)
    assert_matches(out, ref.layernorm(x, g, b, 1e-5),
                   ref.layernorm(x, g.to(dtype), b.to(dtype), 1e-5, dtype=dtype), "layernorm")


def test_layernorm_strided(device):
    x = strided_rows((5, 3, 128), torch.bfloat16, device, "heads")
    g = torch.randn(128, device=device)
    b = torch.randn(128, device=device)
    assert_matches(flashinfer.layernorm(x, g, b), ref.layernorm(x, g, b),
                   ref.layernorm(x, g.bfloat16(), b.bfloat16(), dtype=torch.bfloat16))


def test_norm_leading_dims(device):
    x = torch.randn(2, 3, 4, 256, dtype=torch.bfloat16, device=device)
    w = torch.randn(256, dtype=torch.bfloat16, device=device)
    out = flashinfer.rmsnorm(x, w)
    assert out.shape == x.shape and out.is_contiguous()
    assert_matches(out, ref.rmsnorm(x, w), ref.rmsnorm(x, w, dtype=torch.bfloat16))
