"""Shared test helpers: the tolerance rule, poisoned outputs, strided layouts."""

import torch

POISON = float("nan")


def assert_matches(out, ref, baseline, what=""):
    """DESIGN.md's rule: max |out - ref| <= 2 * max |baseline - ref| + a small floor, where ref is float64
    and baseline is the same computation in plain PyTorch at the output's precision. NaN never passes, so a
    poisoned element that was never written fails."""
    out64, ref64, base64 = (t.detach().to("cpu", torch.float64) for t in (out, ref, baseline))
    assert out64.shape == ref64.shape, f"{what}: shape {tuple(out64.shape)} != {tuple(ref64.shape)}"
    if ref64.numel() == 0:
        return
    assert not torch.isnan(out64).any(), f"{what}: NaN in output (unwritten poisoned element or bad math)"
    err = (out64 - ref64).abs().max().item()
    base = (base64 - ref64).abs().max().item()
    floor = 1e-5 * max(1.0, ref64.abs().max().item())
    assert err <= 2 * base + floor, f"{what}: max error {err:.3g} > 2 x plain-PyTorch error {base:.3g} + {floor:.1g}"


def poisoned_like(t, shape=None):
    return torch.full(t.shape if shape is None else shape, POISON, dtype=t.dtype, device=t.device)


def poison_allocator(device, nbytes):
    """Fill and free a block so the next allocation of about that size starts as NaN (CUDA caching allocator);
    makes an unwritten element of a freshly allocated output visible."""
    if str(device).startswith("cuda") and nbytes > 0:
        block = torch.full((nbytes // 4 + 1,), POISON, dtype=torch.float32, device=device)
        del block


def strided_rows(shape, dtype, device, layout):
    """A [..., D] tensor in the given layout: 'contiguous'; 'row_stride' (rows padded, as a slice of a wider
    buffer); 'unaligned' (rows off the 16-byte grid); 'heads' (a [T, H, D] view of a packed [T, (H + 2) * D] buffer, like q out of a qkv projection)."""
    if layout == "contiguous":
        return torch.randn(shape, dtype=dtype, device=device)
    if layout == "row_stride":
        *lead, d = shape
        wide = torch.randn(*lead, d + 24, dtype=dtype, device=device)
        return wide[..., 8 : 8 + d]
    if layout == "unaligned":  # rows start off the 16-byte grid: the scalar path
        *lead, d = shape
        wide = torch.randn(*lead, d + 1, dtype=dtype, device=device)
        return wide[..., 1:]
    if layout == "heads":
        t, h, d = shape
        packed = torch.randn(t, (h + 2) * d, dtype=dtype, device=device)
        return packed[:, d : d + h * d].view(t, h, d)
    raise ValueError(layout)


# ---- paged KV caches ----

def page_table(lens, page_size):
    """(indptr, last_page_len), int32 on the CPU, for requests of the given KV lengths."""
    counts = [(n + page_size - 1) // page_size for n in lens]
    indptr = torch.tensor([0] + torch.tensor(counts, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)
    last = torch.tensor([(n - 1) % page_size + 1 if n > 0 else 0 for n in lens], dtype=torch.int32)
    return indptr, last


def paged_cache(num_pages, page_size, heads, dim, dtype, device, layout="NHD", form="5d", generator=None):
    """A random cache: one 5-D NHD/HND tensor, or (form="tuple") separate K and V 4-D tensors."""
    shape = (num_pages, 2, page_size, heads, dim) if layout == "NHD" else (num_pages, 2, heads, page_size, dim)
    cache = (torch.randn(shape, generator=generator) * 2).to(dtype).to(device)
    return (cache[:, 0].contiguous(), cache[:, 1].contiguous()) if form == "tuple" else cache


def logical_pages(cache, layout):
    """K and V pages as [num_pages, page_size, heads, head_dim] views of either cache form."""
    k, v = cache if isinstance(cache, tuple) else (cache[:, 0], cache[:, 1])
    if layout == "HND":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    return k, v
