import math

import pytest
import torch

import flashinfer
import reference as ref
from helpers import assert_matches, logical_pages, page_table, paged_cache, poison_allocator


def _batch(lengths, page_size, hkv, d, kv_dtype, device, layout="NHD", form="5d", num_pages=None, seed=0):
    """A paged cache holding requests of the given lengths on randomly ordered pages, and its page tables."""
    g = torch.Generator().manual_seed(seed)
    indptr, last = page_table(lengths, page_size)
    num_pages = num_pages or int(indptr[-1]) + 3
    perm = torch.randperm(num_pages, generator=g)[: int(indptr[-1])].to(torch.int32)
    cache = paged_cache(num_pages, page_size, hkv, d, kv_dtype, device, layout, form, generator=g)
    return cache, perm.to(device), indptr.to(device), last.to(device)


def _expect(q, cache, layout, indptr, indices, last, dtype, **kw):
    k_pages, v_pages = (t.cpu().double() for t in logical_pages(cache, layout))
    k_scale, v_scale = kw.pop("k_scale", 1.0), kw.pop("v_scale", 1.0)
    outs, lses, base_outs, base_lses = [], [], [], []
    for b in range(q.shape[0]):
        k, v = ref.paged_kv(k_pages, v_pages, indptr.cpu(), indices.cpu(), last.cpu(), b)
        o, s = ref.decode_one(q[b].cpu(), k * k_scale, v * v_scale, **kw)
        bo, bs = ref.decode_one(q[b].cpu(), k * k_scale, v * v_scale, dtype=dtype, **kw)
        outs.append(o), lses.append(s), base_outs.append(bo), base_lses.append(bs)
    return torch.stack(outs), torch.stack(lses), torch.stack(base_outs), torch.stack(base_lses)


def _check(out, lse, expect, device_what=""):
    e_out, e_lse, b_out, b_lse = expect
    assert_matches(out, e_out, b_out, f"{device_what} out")
    finite = torch.isfinite(e_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), finite), "lse must be -inf exactly for empty requests"
    assert_matches(lse.cpu()[finite], e_lse[finite], b_lse[finite], f"{device_what} lse")


LENGTHS = [0, 1, 15, 16, 17, 100]
# Both CUDA kernels, each of which takes every case.
BACKENDS = ["tensor_core", "cuda_core"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("group", [1, 4, 7])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode(device, dtype, head_dim, group, page_size, layout, backend):
    hkv = 2
    cache, indices, indptr, last = _batch(LENGTHS, page_size, hkv, head_dim, dtype, device, layout)
    # q sliced out of a packed projection: strided, not contiguous.
    packed = torch.randn(len(LENGTHS), hkv * group + 3, head_dim, dtype=dtype, device=device)
    q = packed[:, 1 : 1 + hkv * group]
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), kv_layout=layout,
                                                            backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, head_dim, page_size, q_data_type=dtype)
    poison_allocator(device, q.numel() * 4 * 40)
    out, lse = wrapper.run(q, cache, return_lse=True)
    _check(out, lse, _expect(q, cache, layout, indptr, indices, last, dtype, sm_scale=1 / math.sqrt(head_dim)))


@pytest.mark.parametrize("page_size", [3, 32, 64])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_page_sizes(device, page_size, layout, backend):
    # Page sizes the main grid leaves out: one that is not a power of two, and pages as long as a KV tile or more.
    dtype, d, hkv, group = torch.float16, 128, 2, 4
    lengths = [0, 1, page_size - 1, page_size, page_size + 1, 3 * page_size + 7, 200]
    cache, indices, indptr, last = _batch(lengths, page_size, hkv, d, dtype, device, layout)
    q = torch.randn(len(lengths), hkv * group, d, dtype=dtype, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), kv_layout=layout,
                                                            backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page_size, q_data_type=dtype)
    out, lse = wrapper.run(q, cache, return_lse=True)
    _check(out, lse, _expect(q, cache, layout, indptr, indices, last, dtype, sm_scale=1 / math.sqrt(d)), "page")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_more_than_one_wave(device, head_dim, backend):
    # 64 requests x 8 kv heads, short enough that nothing splits: 512 blocks, more than one wave, where the launcher
    # caps the blocks per SM (through extra shared memory) so the last wave is not a few slow blocks. On 132 SMs the
    # tensor-core kernel at D 64 fits 3 a SM and runs 2 (2 waves of 264, not 396 then 116).
    hkv, group, dtype = 8, 4, torch.bfloat16
    lengths = [(7 * i) % 41 for i in range(64)]
    cache, indices, indptr, last = _batch(lengths, 16, hkv, head_dim, dtype, device)
    q = torch.randn(len(lengths), hkv * group, head_dim, dtype=dtype, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, head_dim, 16, q_data_type=dtype)
    out, lse = wrapper.run(q, cache, return_lse=True)
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, dtype, sm_scale=1 / math.sqrt(head_dim)))


@pytest.mark.parametrize("feature", ["window", "soft_cap", "rope", "sm_scale", "tuple_cache"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_features(device, feature, backend):
    dtype, d, hkv, group, page = torch.bfloat16, 128, 2, 4, 16
    form = "tuple" if feature == "tuple_cache" else "5d"
    cache, indices, indptr, last = _batch(LENGTHS, page, hkv, d, dtype, device, form=form)
    q = torch.randn(len(LENGTHS), hkv * group, d, dtype=dtype, device=device)
    kw = dict(sm_scale=1 / math.sqrt(d))
    plan = {}
    if feature == "window":
        plan["window_left"] = kw["window_left"] = 9
    elif feature == "soft_cap":
        plan["logits_soft_cap"] = kw["logits_soft_cap"] = 5.0
    elif feature == "rope":
        plan.update(pos_encoding_mode="ROPE_LLAMA", rope_theta=5e5)
        kw["rope"] = (1.0, 5e5)
    elif feature == "sm_scale":
        plan["sm_scale"] = kw["sm_scale"] = 0.3
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page, **plan)
    out, lse = wrapper.run_return_lse(q, cache)
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, dtype, **kw), feature)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype, kv_dtype", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float8_e4m3fn),
                                             (torch.float16, torch.float8_e5m2)])
@pytest.mark.parametrize("group", [1, 5])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_rope(device, head_dim, dtype, kv_dtype, group, backend):
    """ROPE_LLAMA in the kernel: the query at position len - 1, key j at j, with rope_scale and rope_theta. Lengths
    cross pages, tiles (a key's rotation follows from the previous key's within a tile) and KV splits."""
    hkv, page, rope = 2, 16, (2.0, 5e5)
    lengths = [0, 1, 17, 100, 300, 2500]
    cache, indices, indptr, last = _batch(lengths, page, hkv, head_dim, kv_dtype, device, seed=4)
    q = torch.randn(len(lengths), hkv * group, head_dim, dtype=dtype, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, head_dim, page, pos_encoding_mode="ROPE_LLAMA",
                 q_data_type=dtype, rope_scale=rope[0], rope_theta=rope[1])
    out, lse = wrapper.run(q, cache, return_lse=True)
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, dtype, sm_scale=1 / math.sqrt(head_dim),
                             rope=rope), "rope")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_rope_fp8_range(device, dtype, backend):
    """e5m2 K and V at the top of their range (+-57344; a pair rotated by 45 degrees reaches 81100, past f16's 65504),
    brought back by k_scale and v_scale: the rotation must not overflow on its way to the mma."""
    d, hkv, group, page, rope = 128, 2, 4, 16, (1.0, 1e4)
    lengths = [1, 100, 700]
    cache, indices, indptr, last = _batch(lengths, page, hkv, d, torch.float8_e5m2, device, seed=5)
    sign = torch.randint(0, 2, cache.shape, generator=torch.Generator().manual_seed(6)) * 2 - 1
    cache.copy_((sign * 57344.0).to(torch.float8_e5m2))
    scale = 2.0**-16
    q = torch.randn(len(lengths), hkv * group, d, dtype=dtype, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page, pos_encoding_mode="ROPE_LLAMA", q_data_type=dtype,
                 rope_scale=rope[0], rope_theta=rope[1])
    out, lse = wrapper.run(q, cache, k_scale=scale, v_scale=scale, return_lse=True)
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, dtype, sm_scale=1 / math.sqrt(d), rope=rope,
                             k_scale=scale, v_scale=scale), "rope fp8 range")


@pytest.mark.parametrize("group", [5, 8, 16, 20, 40])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_gqa_groups(device, group, backend):
    # 20 and 40 take two head chunks per kv head (tensor cores serve 16 heads a block, CUDA cores 32 at D=128).
    dtype, d, hkv, page = torch.bfloat16, 128, 1, 16
    cache, indices, indptr, last = _batch(LENGTHS, page, hkv, d, dtype, device)
    q = torch.randn(len(LENGTHS), hkv * group, d, dtype=dtype, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page)
    out, lse = wrapper.run(q, cache, return_lse=True)
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, dtype, sm_scale=1 / math.sqrt(d)), "gqa")


@pytest.mark.parametrize("window_left", [-1, 300])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.float8_e4m3fn])
def test_batch_decode_long_requests(device, window_left, backend, kv_dtype):
    # Enough requests x kv heads to fill the GPU without KV splits, so one block walks many pipeline tiles;
    # lengths cross tile (64 tokens), page and window boundaries.
    dtype, d, hkv, group, page = torch.float16, 128, 8, 2, 16
    lengths = torch.randint(0, 1500, (40,), generator=torch.Generator().manual_seed(3)).tolist() + [1, 64, 65, 1024]
    cache, indices, indptr, last = _batch(lengths, page, hkv, d, kv_dtype, device)
    q = torch.randn(len(lengths), hkv * group, d, dtype=dtype, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page, window_left=window_left)
    out, lse = wrapper.run(q, cache, return_lse=True)
    kw = dict(sm_scale=1 / math.sqrt(d)) | (dict(window_left=window_left) if window_left >= 0 else {})
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, dtype, **kw), "long")


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_decode_fp8_kv(device, kv_dtype, dtype, d, backend):
    # Both paths: the tensor-core kernel converts fp8 in registers and runs its mma in f16, whatever the query dtype.
    hkv, group, page = 2, 4, 16
    cache, indices, indptr, last = _batch(LENGTHS, page, hkv, d, kv_dtype, device)
    q = torch.randn(len(LENGTHS), hkv * group, d, dtype=dtype, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend=backend)
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page)
    out, lse = wrapper.run(q, cache, k_scale=0.5, v_scale=2.0, return_lse=True)
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, dtype, sm_scale=1 / math.sqrt(d),
                             k_scale=0.5, v_scale=2.0), "fp8")


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_batch_decode_fp8_kv_query_range(device, kv_dtype):
    """bf16 query rows far beyond f16's range (1e6, 1e12) or tiny (1e-20) against fp8 KV. The tensor-core kernel
    runs the fp8 mma in f16 with a power-of-two scale per query row: no row may overflow or lose its precision."""
    hkv, group, page, d = 2, 4, 16, 128
    cache, indices, indptr, last = _batch(LENGTHS, page, hkv, d, kv_dtype, device)
    g = torch.Generator().manual_seed(3)
    row_scale = torch.tensor([1e-20, 7e-8, 1e-3, 1.0, 3e4, 1e6, 1e12, 5.0], dtype=torch.float64)
    q = torch.randn(len(LENGTHS), hkv * group, d, dtype=torch.float64, generator=g) * row_scale[:, None]
    q = q.to(torch.bfloat16).to(device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device), backend="tensor_core")
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page)
    out, lse = wrapper.run(q, cache, return_lse=True)
    assert torch.isfinite(out).all()
    _check(out, lse, _expect(q, cache, "NHD", indptr, indices, last, torch.bfloat16, sm_scale=1 / math.sqrt(d)),
           "fp8, scaled q")


def test_batch_decode_out_of_range_pages_are_masked(device):
    d, hkv, page = 64, 1, 4
    cache, indices, indptr, last = _batch([8, 8], page, hkv, d, torch.bfloat16, device, num_pages=4)
    bad = indices.clone()
    bad[1] = 1000  # request 0's second page points outside the cache: its 4 tokens are masked
    q = torch.randn(2, 2, d, dtype=torch.bfloat16, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(indptr, bad, last, 2, hkv, d, page)
    out = wrapper.run(q, cache)
    # Same as a request made of the first page only.
    wrapper.plan(torch.tensor([0, 1, 3], dtype=torch.int32, device=device), bad[[0, 2, 3]],
                 torch.tensor([4, 4], dtype=torch.int32, device=device), 2, hkv, d, page)
    expect = wrapper.run(q, cache)
    torch.testing.assert_close(out[0], expect[0])
    torch.testing.assert_close(out[1], expect[1])


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_single_decode(device, layout):
    d, hkv, hq, n = 128, 2, 8, 37
    q = torch.randn(hq, d, dtype=torch.bfloat16, device=device)
    k = torch.randn(n, hkv, d, dtype=torch.bfloat16, device=device)
    v = torch.randn(n, hkv, d, dtype=torch.bfloat16, device=device)
    kk, vv = (k, v) if layout == "NHD" else (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous())
    out, lse = flashinfer.single_decode_with_kv_cache(q, kk, vv, kv_layout=layout, return_lse=True)
    e_out, e_lse = ref.decode_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(d))
    b_out, b_lse = ref.decode_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(d), dtype=torch.bfloat16)
    assert_matches(out, e_out, b_out, "single decode")
    assert_matches(lse, e_lse, b_lse, "single decode lse")
    empty = flashinfer.single_decode_with_kv_cache(q, k[:0], v[:0])
    assert torch.equal(empty, torch.zeros_like(q))


def test_decode_wrapper_compiles_fullgraph(device):
    d, hkv, group, page = 64, 2, 2, 16
    cache, indices, indptr, last = _batch([5, 40, 17], page, hkv, d, torch.bfloat16, device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(indptr, indices, last, hkv * group, hkv, d, page)
    q = torch.randn(3, hkv * group, d, dtype=torch.bfloat16, device=device)
    expect = wrapper.run(q, cache)
    torch._dynamo.reset()
    got = torch.compile(lambda q, c: wrapper.run(q, c), fullgraph=True)(q, cache)
    torch.testing.assert_close(got, expect)


def _append_step(device):
    """A decode step's inputs: 3 requests (5, 17, 32 tokens after the append), their new token's q/k/v, where the
    new tokens go, and the page tables."""
    d, hkv, group, page = 64, 2, 2, 16
    lens = [5, 17, 32]
    cache, indices, indptr, last = _batch(lens, page, hkv, d, torch.bfloat16, device)
    q = torch.randn(3, hkv * group, d, dtype=torch.bfloat16, device=device)
    k_new = torch.randn(3, hkv, d, dtype=torch.bfloat16, device=device)
    v_new = torch.randn(3, hkv, d, dtype=torch.bfloat16, device=device)
    b = torch.arange(3, dtype=torch.int32, device=device)
    pos = torch.tensor([n - 1 for n in lens], dtype=torch.int32, device=device)
    return q, k_new, v_new, cache, b, pos, indices, indptr, last


def test_append_and_decode_compile_in_place(device):
    """append_paged_kv_cache + decode in one compiled function: one graph, the cache written in place (no clone or
    copy of it in the generated code), outputs equal to eager."""
    from torch._inductor.utils import run_and_get_code

    q, k_new, v_new, cache, b, pos, indices, indptr, last = _append_step(device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(indptr, indices, last, q.shape[1], cache.shape[3], q.shape[2], cache.shape[2])

    def step(q, k_new, v_new, cache):
        flashinfer.append_paged_kv_cache(k_new, v_new, b, pos, cache, indices, indptr, last)
        return wrapper.run(q, cache)

    expect_cache = cache.clone()
    expect = step(q, k_new, v_new, expect_cache)
    torch._dynamo.reset()
    got, codes = run_and_get_code(torch.compile(step, fullgraph=True), q, k_new, v_new, cache)
    torch.testing.assert_close(got, expect)
    assert torch.equal(cache, expect_cache)
    code = "\n".join(codes)
    assert "torch.ops.flashinfer.append_paged_kv_cache.default(" in code
    assert "torch.ops.flashinfer.batch_decode_with_paged_kv_cache.default(" in code
    for copy in ("clone", "copy_"):
        assert copy not in code, f"generated code holds a {copy} (of the cache?)"


@pytest.mark.parametrize("case,msg", [
    (dict(head_dim=96), r"unsupported head_dim 96: supported 64, 128, 256"),
    (dict(hq=6, hkv=4), r"num_qo_heads \(6\) must be a multiple of num_kv_heads \(4\)"),
    (dict(indptr_dtype=torch.int64), r"indptr must be int32"),
])
def test_plan_bad_input(case, msg):
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1))
    indptr = torch.tensor([0, 1], dtype=case.get("indptr_dtype", torch.int32))
    with pytest.raises(ValueError, match=msg):
        wrapper.plan(indptr, torch.zeros(1, dtype=torch.int32), torch.ones(1, dtype=torch.int32), case.get("hq", 4),
                     case.get("hkv", 2), case.get("head_dim", 128), 16)


def test_op_bad_input_named(device):
    q = torch.randn(2, 4, 96, dtype=torch.bfloat16, device=device)
    cache = torch.randn(3, 2, 16, 2, 96, dtype=torch.bfloat16, device=device)
    i32 = dict(dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match=r"batch_decode_with_paged_kv_cache: unsupported head_dim 96"):
        torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
            q, cache, None, torch.tensor([0, 1, 2], **i32), torch.tensor([0, 1], **i32), torch.tensor([1, 1], **i32),
            "NHD", False, -1, 0.0, 0.1, 1.0, 1.0, 1.0, 1e4)
    q = torch.randn(2, 4, 64, dtype=torch.bfloat16, device=device)
    cache = torch.randn(3, 2, 16, 2, 64, dtype=torch.bfloat16, device=device)
    with pytest.raises(RuntimeError, match=r'backend must be "auto", "tensor_core" or "cuda_core", got "fa3"'):
        torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
            q, cache, None, torch.tensor([0, 1, 2], **i32), torch.tensor([0, 1], **i32), torch.tensor([1, 1], **i32),
            "NHD", False, -1, 0.0, 0.1, 1.0, 1.0, 1.0, 1e4, "fa3")


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_kv_rows_off_16_bytes_named(kv_dtype):
    """The kernels copy K/V rows 16 bytes at a time: a cache view whose rows start off that grid is refused by name.
    Head rows 72 elements apart are on the grid for 16-bit KV and off it for fp8; so is a base 8 elements in."""
    i32 = dict(dtype=torch.int32, device="cuda")
    q = torch.randn(2, 4, 64, dtype=torch.bfloat16, device="cuda")
    wide = torch.randn(3, 2, 16, 2, 72, device="cuda").to(kv_dtype)
    shifted = torch.randn(3 * 2 * 16 * 2 * 64 + 8, device="cuda").to(kv_dtype)[8:].view(3, 2, 16, 2, 64)
    fp8 = kv_dtype.itemsize == 1
    # 8 bf16 elements are 16 bytes: the shifted view is on the grid, so bf16 checks the wide view only.
    for cache in (wide[..., :64], shifted) if fp8 else (wide[..., :64],):
        call = lambda: torch.ops.flashinfer.batch_decode_with_paged_kv_cache(  # noqa: E731
            q, cache, None, torch.tensor([0, 1, 2], **i32), torch.tensor([0, 1], **i32), torch.tensor([1, 1], **i32),
            "NHD", False, -1, 0.0, 0.125, 1.0, 1.0, 1.0, 1e4)
        if fp8:
            with pytest.raises(RuntimeError, match=r"batch_decode_with_paged_kv_cache: KV rows must start on 16-byte "
                                                   r"boundaries \(8 elements for 16-bit KV, 16 for fp8"):
                call()
        else:
            out = call()
            ref = torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
                q, cache.contiguous(), None, torch.tensor([0, 1, 2], **i32), torch.tensor([0, 1], **i32),
                torch.tensor([1, 1], **i32), "NHD", False, -1, 0.0, 0.125, 1.0, 1.0, 1.0, 1e4)
            torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_run_into_given_buffers(device):
    """run(out=, lse=) fills and returns the caller's buffers; a buffer of another shape, dtype or device is
    refused by name instead of being broadcast or cast into."""
    cache, indices, indptr, last = _batch([5, 40], 16, 2, 64, torch.bfloat16, device)
    q = torch.randn(2, 4, 64, dtype=torch.bfloat16, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(indptr, indices, last, 4, 2, 64, 16, q_data_type=torch.bfloat16)
    expect_out, expect_lse = wrapper.run(q, cache, return_lse=True)
    out, lse = torch.full_like(expect_out, float("nan")), torch.full_like(expect_lse, float("nan"))
    got_out, got_lse = wrapper.run(q, cache, out=out, lse=lse, return_lse=True)
    assert got_out is out and got_lse is lse
    assert torch.equal(out, expect_out) and torch.equal(lse, expect_lse)
    with pytest.raises(ValueError, match=r"out must be a bfloat16 tensor of shape \[2, 4, 64\] on .*, got a "
                                         r"float32 tensor of shape \[2, 4, 64\]"):
        wrapper.run(q, cache, out=torch.empty(2, 4, 64, device=device))
    with pytest.raises(ValueError, match=r"lse must be a float32 tensor of shape \[2, 4\] on .*, got a "
                                         r"float32 tensor of shape \[1, 2, 4\]"):
        wrapper.run(q, cache, lse=torch.empty(1, 2, 4, device=device), return_lse=True)


class _AppendDecode(torch.nn.Module):
    """One decode step of one layer: write the new token's K/V into the cache, then attend."""

    def forward(self, q, k_new, v_new, cache, batch_indices, positions, indices, indptr, last):
        flashinfer.append_paged_kv_cache(k_new, v_new, batch_indices, positions, cache, indices, indptr, last)
        return torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
            q, cache, None, indptr, indices, last, "NHD", False, -1, 0.0, q.shape[-1] ** -0.5, 1.0, 1.0, 1.0, 1e4)[0]


def test_export_append_and_decode(device):
    q, k_new, v_new, cache, b, pos, indices, indptr, last = _append_step(device)
    args = (q, k_new, v_new, cache, b, pos, indices, indptr, last)
    expect_cache = cache.clone()
    expect = _AppendDecode()(q, k_new, v_new, expect_cache, *args[4:])
    batch = torch.export.Dim("batch", min=1, max=1024)
    dyn = ({0: batch}, {0: batch}, {0: batch}, None, {0: batch}, {0: batch}, None, {0: batch + 1}, {0: batch})
    ep = torch.export.export(_AppendDecode(), args, dynamic_shapes=dyn)
    assert sorted(ep.run_decompositions({}).graph_signature.user_inputs_to_mutate.values()) == ["cache"]
    got = ep.module()(*args)
    torch.testing.assert_close(got, expect)
    assert torch.equal(cache, expect_cache)


def test_plan_validate_names_a_negative_page_id():
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1))
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    with pytest.raises(ValueError, match=r"kv_indices\[1\]=-2 is not a page of the cache \(>= 0\)"):
        wrapper.plan(i32([0, 2]), i32([3, -2]), i32([5]), 4, 2, 64, 16, validate=True)
