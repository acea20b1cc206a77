import pytest
import torch

import flashinfer
import reference as ref
from helpers import assert_matches, poison_allocator

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
LLAMA31 = dict(rope_scale=8.0, rope_theta=5e5, low_freq_factor=1.0, high_freq_factor=4.0, old_context_len=8192)


def _qk(nnz, hq, hk, d, dtype, device, packed=False):
    if not packed:
        return (torch.randn(nnz, hq, d, dtype=dtype, device=device),
                torch.randn(nnz, hk, d, dtype=dtype, device=device))
    # q and k as strided views of one packed qkv projection output.
    qkv = torch.randn(nnz, (hq + 2 * hk) * d, dtype=dtype, device=device)
    return qkv[:, : hq * d].view(nnz, hq, d), qkv[:, hq * d : (hq + hk) * d].view(nnz, hk, d)


def _ragged(lengths, device):
    indptr = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    offsets = torch.randint(0, 5000, (len(lengths),), dtype=torch.int32)
    return indptr.to(device), offsets.to(device)


def _check_pair(outs, q, k, positions, rot, interleave, dtype, llama31=None, scale=1.0, theta=1e4, what=""):
    for got, x, name in zip(outs, (q, k), ("q", "k")):
        expect = ref.rope(x.cpu(), positions, rot, interleave, scale, theta, llama31)
        base = ref.rope(x.cpu(), positions, rot, interleave, scale, theta, llama31, dtype=dtype)
        assert_matches(got, expect, base, f"{what} {name}")


def _rope_pos_ids(q, k, pos, rotary_dim, interleave, inplace, device):
    """apply_rope_pos_ids[_inplace]; out of place, checks that the inputs are untouched and the outputs contiguous."""
    if inplace:
        flashinfer.apply_rope_pos_ids_inplace(q, k, pos, rotary_dim, interleave)
        return q, k
    q0, k0 = q.clone(), k.clone()
    poison_allocator(device, q.numel() * q.element_size())
    outs = flashinfer.apply_rope_pos_ids(q, k, pos, rotary_dim, interleave)
    assert torch.equal(q, q0) and torch.equal(k, k0), "out-of-place RoPE modified its inputs"
    assert outs[0].is_contiguous() and outs[1].is_contiguous()
    return outs


def _rope_cache(positions, query, key, head_size, cache, is_neox, inplace):
    """apply_rope_with_cos_sin_cache[_inplace]; out of place, checks the output shapes."""
    if inplace:
        flashinfer.apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cache, is_neox)
        return query, key
    outs = flashinfer.apply_rope_with_cos_sin_cache(positions, query, key, head_size, cache, is_neox)
    assert outs[0].shape == query.shape and outs[1].shape == key.shape
    return outs


def _check_cache(outs, q, k, positions, cache, interleave, dtype, what):
    """Each output (viewed as [nnz, heads, head_size]) against the float64 reference of its input."""
    for got, x in zip(outs, (q, k)):
        expect = ref.rope_with_cache(x.cpu(), positions.cpu(), cache.cpu(), interleave)
        base = ref.rope_with_cache(x.cpu(), positions.cpu(), cache.cpu(), interleave, dtype=dtype)
        assert_matches(got.view(x.shape), expect, base, what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (128, 64), (256, 256), (80, 40)])
@pytest.mark.parametrize("heads", [(4, 4), (8, 1), (5, 1)])
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_rope_pos_ids(device, dtype, head_dim, rotary_dim, heads, interleave, inplace):
    nnz = 37
    q, k = _qk(nnz, *heads, head_dim, dtype, device, packed=True)
    pos = torch.randint(0, 9000, (nnz,), device=device)
    positions = pos.tolist()
    q0, k0 = q.clone(), k.clone()
    outs = _rope_pos_ids(q, k, pos, rotary_dim, interleave, inplace, device)
    _check_pair(outs, q0, k0, positions, rotary_dim, interleave, dtype, what="rope_pos_ids")


# Batch sizes on each side of the CUDA kernel's launch choices (one item per thread loaded early up to 256 tokens,
# two up to 1024, late loads beyond; with a cos/sin cache, tokens spread over several blocks up to 4096), and a head
# count whose items outnumber the threads of a block.
@pytest.mark.parametrize("nnz,heads,head_dim,rotary_dim", [
    (256, (4, 2), 128, 128), (257, (4, 2), 128, 64), (1025, (4, 2), 128, 64), (3, (72, 8), 256, 256),
    (300, (72, 8), 256, 128), (4096, (3, 1), 128, 64), (4097, (3, 1), 64, 64)])
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_rope_launch_shapes(device, nnz, heads, head_dim, rotary_dim, interleave, inplace):
    dtype = torch.float32
    q, k = _qk(nnz, *heads, head_dim, dtype, device)
    pos = torch.randint(0, 1 << 17, (nnz,), device=device)
    q0, k0 = q.clone(), k.clone()
    outs = _rope_pos_ids(q, k, pos, rotary_dim, interleave, inplace, device)
    _check_pair(outs, q0, k0, pos.tolist(), rotary_dim, interleave, dtype, what=f"rope nnz={nnz}")
    # The cache holds rotary_dim columns; dims past it pass through (copied when out of place).
    cache = ref.cos_sin_cache(1 << 14, rotary_dim).to(device)
    pos = pos % (1 << 14)
    outs = _rope_cache(pos, q0.clone(), k0.clone(), head_dim, cache, not interleave, inplace)
    _check_cache(outs, q0, k0, pos, cache, interleave, dtype, f"cos_sin_cache nnz={nnz}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lengths", [[0], [1], [3, 0, 17, 1], [64, 5]])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("padding", [0, 3])
def test_rope_ragged(device, dtype, lengths, inplace, padding):
    indptr, offsets = _ragged(lengths, device)
    nnz = sum(lengths) + padding  # tokens past indptr[-1] are padding: left unrotated
    q, k = _qk(nnz, 4, 2, 128, dtype, device)
    positions = ref.ragged_positions(indptr.cpu(), offsets.cpu(), nnz)
    q0, k0 = q.clone(), k.clone()
    if inplace:
        flashinfer.apply_rope_inplace(q, k, indptr, offsets, rope_theta=1e4)
        outs = (q, k)
    else:
        outs = flashinfer.apply_rope(q, k, indptr, offsets, rope_theta=1e4)
    _check_pair(outs, q0, k0, positions, 128, False, dtype, what="rope ragged")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("form", ["pos_ids", "pos_ids_inplace", "ragged", "ragged_inplace"])
def test_llama31_rope(device, dtype, interleave, form):
    lengths = [7, 20, 1]
    indptr, offsets = _ragged(lengths, device)
    nnz = sum(lengths)
    q, k = _qk(nnz, 8, 2, 128, dtype, device)
    positions = ref.ragged_positions(indptr.cpu(), offsets.cpu(), nnz)
    pos = torch.tensor(positions, dtype=torch.int32, device=device)
    q0, k0 = q.clone(), k.clone()
    if form == "pos_ids":
        outs = flashinfer.apply_llama31_rope_pos_ids(q, k, pos, interleave=interleave)
    elif form == "pos_ids_inplace":
        flashinfer.apply_llama31_rope_pos_ids_inplace(q, k, pos, interleave=interleave)
        outs = (q, k)
    elif form == "ragged":
        outs = flashinfer.apply_llama31_rope(q, k, indptr, offsets, interleave=interleave)
    else:
        flashinfer.apply_llama31_rope_inplace(q, k, indptr, offsets, interleave=interleave)
        outs = (q, k)
    l31 = (LLAMA31["low_freq_factor"], LLAMA31["high_freq_factor"], LLAMA31["old_context_len"])
    _check_pair(outs, q0, k0, positions, 128, interleave, dtype, llama31=l31, scale=8.0, theta=5e5, what=form)


def test_llama31_custom_factors(device):
    q, k = _qk(9, 2, 2, 64, torch.float32, device)
    pos = torch.arange(0, 9000, 1000, device=device)
    outs = flashinfer.apply_llama31_rope_pos_ids(q, k, pos, rope_scale=4, rope_theta=1e5, low_freq_factor=2,
                                                 high_freq_factor=8, old_context_len=4096)
    _check_pair(outs, q, k, pos.tolist(), 64, False, torch.float32, llama31=(2, 8, 4096), scale=4, theta=1e5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("rot,head_size", [(128, 128), (64, 128)])
@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("inplace", [False, True])
def test_rope_with_cos_sin_cache(device, dtype, is_neox, rot, head_size, flat, inplace):
    nnz, hq, hk = 23, 4, 2
    cache = ref.cos_sin_cache(4096, rot).to(device)
    positions = torch.randint(0, 4096, (nnz,), device=device)
    q = torch.randn(nnz, hq, head_size, dtype=dtype, device=device)
    k = torch.randn(nnz, hk, head_size, dtype=dtype, device=device)
    query, key = (q.flatten(1), k.flatten(1)) if flat else (q, k)
    q0, k0 = q.clone(), k.clone()
    outs = _rope_cache(positions, query, key, head_size, cache, is_neox, inplace)
    _check_cache(outs, q0, k0, positions, cache, not is_neox, dtype, "cos_sin_cache")


def test_rope_cache_position_out_of_range_is_nan(device):
    cache = ref.cos_sin_cache(16, 64).to(device)
    q = torch.randn(3, 2, 64, device=device)
    k = torch.randn(3, 1, 64, device=device)
    pos = torch.tensor([0, 16, -1], device=device)
    qo, ko = flashinfer.apply_rope_with_cos_sin_cache(pos, q, k, 64, cache)
    assert torch.isfinite(qo[0]).all() and torch.isnan(qo[1:]).all() and torch.isnan(ko[1:]).all()


def test_rope_empty(device):
    q, k = _qk(0, 4, 2, 64, torch.bfloat16, device)
    pos = torch.zeros(0, dtype=torch.int32, device=device)
    qo, ko = flashinfer.apply_rope_pos_ids(q, k, pos)
    assert qo.shape == q.shape and ko.shape == k.shape
    flashinfer.apply_rope_pos_ids_inplace(q, k, pos)
