import math

import pytest
import torch

import flashinfer
import reference as ref
from helpers import assert_matches, logical_pages, page_table, paged_cache, poison_allocator

# (qo_len, kv_len) per request: empty query, single token, prefix cached, qo == kv, qo > kv, empty KV.
PAIRS = [(0, 5), (1, 1), (17, 40), (64, 64), (100, 130), (5, 3), (3, 0), (70, 200)]


def _ragged(pairs, hq, hkv, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    qo = torch.tensor([0] + [p[0] for p in pairs]).cumsum(0).to(torch.int32)
    kv = torch.tensor([0] + [p[1] for p in pairs]).cumsum(0).to(torch.int32)
    q = torch.randn(int(qo[-1]), hq, d, generator=g).to(dtype).to(device)
    k = torch.randn(int(kv[-1]), hkv, d, generator=g).to(dtype).to(device)
    v = torch.randn(int(kv[-1]), hkv, d, generator=g).to(dtype).to(device)
    return q, k, v, qo.to(device), kv.to(device)


def _expect(q, ks, vs, qo, dtype, masks=None, **kw):
    """float64 reference and the plain-PyTorch baseline at `dtype`, request by request; ks/vs are per request."""
    outs, lses, bouts, blses = [], [], [], []
    qo = qo.cpu().tolist()
    for b in range(len(ks)):
        qb = q[qo[b] : qo[b + 1]].cpu()
        m = None if masks is None else masks[b]
        o, s = ref.prefill_one(qb, ks[b].cpu(), vs[b].cpu(), mask=m, **kw)
        bo, bs = ref.prefill_one(qb, ks[b].cpu(), vs[b].cpu(), mask=m, dtype=dtype, **kw)
        outs.append(o), lses.append(s), bouts.append(bo), blses.append(bs)
    return torch.cat(outs), torch.cat(lses), torch.cat(bouts), torch.cat(blses)


def _check(out, lse, expect, what):
    e_out, e_lse, b_out, b_lse = expect
    assert_matches(out, e_out, b_out, f"{what} out")
    finite = torch.isfinite(e_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), finite), f"{what}: lse must be -inf exactly for rows with no key"
    assert_matches(lse.cpu()[finite], e_lse[finite], b_lse[finite], f"{what} lse")


def _split(k, kv):
    kv = kv.cpu().tolist()
    return [k[kv[b] : kv[b + 1]] for b in range(len(kv) - 1)]


def _random_masks(pairs, g, density, plan, device):
    """A random boolean mask per request of `pairs`, also set flattened as plan["custom_mask"]."""
    masks = [torch.rand(a, b, generator=g) < density for a, b in pairs]
    plan["custom_mask"] = torch.cat([m.reshape(-1) for m in masks]).to(device)
    return masks


def _paged(pairs, q, qo, hkv, d, kv_dtype, device, g, plan, run=None, page=16):
    """The paged wrapper over a random NHD cache holding `pairs`' KV on scattered pages: out, lse, and each request's
    K and V as the cache holds them (float, on the CPU)."""
    indptr, last = page_table([b for _, b in pairs], page)
    num_pages = int(indptr[-1]) + 3
    indices = torch.randperm(num_pages, generator=g)[: int(indptr[-1])].to(torch.int32)
    cache = paged_cache(num_pages, page, hkv, d, kv_dtype, device, "NHD", "5d", generator=g)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo.to(device), indptr.to(device), indices.to(device), last.to(device), q.shape[1], hkv, d, page,
                 **plan)
    out, lse = wrapper.run(q, cache, return_lse=True, **(run or {}))
    k_pages, v_pages = (t.float().cpu() for t in logical_pages(cache, "NHD"))
    ks, vs = zip(*(ref.paged_kv(k_pages, v_pages, indptr, indices, last, b) for b in range(len(pairs))))
    return out, lse, list(ks), list(vs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("group", [1, 4, 5])
@pytest.mark.parametrize("causal", [False, True])
def test_batch_prefill_ragged(device, dtype, head_dim, group, causal):
    hkv = 2
    q, k, v, qo, kv = _ragged(PAIRS, hkv * group, hkv, head_dim, dtype, device)
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo, kv, hkv * group, hkv, head_dim, causal=causal)
    poison_allocator(device, q.numel() * 2 * 4)
    out, lse = wrapper.run(q, k, v, return_lse=True)
    _check(out, lse, _expect(q, _split(k, kv), _split(v, kv), qo, dtype, sm_scale=1 / math.sqrt(head_dim),
                             causal=causal), "ragged")


@pytest.mark.parametrize("group", [2, 7, 8, 16, 32])
@pytest.mark.parametrize("form", ["ragged", "paged"])
def test_batch_prefill_gqa_groups(device, group, form):
    """Query rows pack (token, head) head-fastest into the mma tiles: groups that divide a 16-row tile, that do
    not (7), and that fill one or more whole tiles (16, 32: every row of a tile is one token's heads)."""
    hkv, d, dtype = 1, 128, torch.bfloat16
    pairs = [(1, 1), (9, 40), (33, 33), (0, 7), (20, 150)]
    q, k, v, qo, kv = _ragged(pairs, hkv * group, hkv, d, dtype, device, seed=group)
    if form == "ragged":
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
        wrapper.plan(qo, kv, hkv * group, hkv, d, causal=True)
        out, lse = wrapper.run(q, k, v, return_lse=True)
        ks, vs = _split(k, kv), _split(v, kv)
    else:
        g = torch.Generator().manual_seed(group)
        out, lse, ks, vs = _paged(pairs, q, qo, hkv, d, dtype, device, g, dict(causal=True))
    _check(out, lse, _expect(q, ks, vs, qo, dtype, sm_scale=1 / math.sqrt(d), causal=True), f"group {group}")


@pytest.mark.parametrize("head_dim", [64, 128])
def test_batch_prefill_unaligned_q(device, head_dim):
    """q rows that do not start on 16-byte boundaries (a view one element into a wider buffer) are read correctly."""
    hkv, group, dtype = 2, 4, torch.bfloat16
    q, k, v, qo, kv = _ragged(PAIRS, hkv * group, hkv, head_dim, dtype, device, seed=3)
    wide = torch.zeros(q.shape[0], q.shape[1], head_dim + 1, dtype=dtype, device=device)
    wide[..., 1:] = q
    q_view = wide[..., 1:]
    assert q_view.stride(-1) == 1 and (q_view.data_ptr() % 16 != 0 or q_view.stride(1) % 8 != 0)
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo, kv, hkv * group, hkv, head_dim, causal=True)
    out, lse = wrapper.run(q_view, k, v, return_lse=True)
    _check(out, lse, _expect(q, _split(k, kv), _split(v, kv), qo, dtype, sm_scale=1 / math.sqrt(head_dim),
                             causal=True), "unaligned q")


@pytest.mark.parametrize("page_size", [1, 5, 16, 64])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("causal", [False, True])
def test_batch_prefill_paged(device, page_size, layout, causal):
    dtype, d, hkv, group = torch.bfloat16, 128, 2, 4
    g = torch.Generator().manual_seed(1)
    kv_lens = [p[1] for p in PAIRS]
    indptr, last = page_table(kv_lens, page_size)
    num_pages = int(indptr[-1]) + 3
    indices = torch.randperm(num_pages, generator=g)[: int(indptr[-1])].to(torch.int32)
    cache = paged_cache(num_pages, page_size, hkv, d, dtype, device, layout, "5d", generator=g)
    qo = torch.tensor([0] + [p[0] for p in PAIRS]).cumsum(0).to(torch.int32)
    q = torch.randn(int(qo[-1]), hkv * group, d, generator=g).to(dtype).to(device)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1, device=device), kv_layout=layout)
    wrapper.plan(qo.to(device), indptr.to(device), indices.to(device), last.to(device), hkv * group, hkv, d,
                 page_size, causal=causal)
    out, lse = wrapper.run(q, cache, return_lse=True)
    k_pages, v_pages = (t.cpu() for t in logical_pages(cache, layout))
    ks, vs = zip(*(ref.paged_kv(k_pages, v_pages, indptr, indices, last, b) for b in range(len(PAIRS))))
    _check(out, lse, _expect(q, ks, vs, qo, dtype, sm_scale=1 / math.sqrt(d), causal=causal), "paged")


@pytest.mark.parametrize("feature", ["window", "soft_cap", "sm_scale", "mask", "mask_is_causal", "strided_qkv"])
def test_batch_prefill_features(device, feature):
    dtype, d, hkv, group = torch.float16, 64, 2, 4
    hq = hkv * group
    q, k, v, qo, kv = _ragged(PAIRS, hq, hkv, d, dtype, device, seed=2)
    kw, plan, masks = dict(sm_scale=1 / math.sqrt(d)), {}, None
    if feature == "window":
        plan.update(causal=True, window_left=20)
        kw.update(causal=True, window_left=20)
    elif feature == "soft_cap":
        plan["logits_soft_cap"] = kw["logits_soft_cap"] = 4.0
    elif feature == "sm_scale":
        plan["sm_scale"] = kw["sm_scale"] = 0.2
    elif feature in ("mask", "mask_is_causal"):
        g = torch.Generator().manual_seed(5)
        if feature == "mask":
            masks = [torch.rand(a, b, generator=g) < 0.6 for a, b in PAIRS]
        else:  # the causal mask written out: must equal causal=True
            masks = [torch.arange(b)[None, :] <= (b - a + torch.arange(a)[:, None]) for a, b in PAIRS]
            kw["causal"] = True
        plan["custom_mask"] = torch.cat([m.reshape(-1) for m in masks]).to(device)
        if feature == "mask_is_causal":
            masks = None
    elif feature == "strided_qkv":
        # q, k, v as views of one packed projection [T, Hq + 2 * Hkv, D] (q and kv token counts differ, so k/v
        # come from a second packed buffer).
        qkv = torch.randn(q.shape[0], hq + 2 * hkv, d, dtype=dtype, device=device)
        q = qkv[:, :hq]
        kvp = torch.randn(k.shape[0], 2 * hkv + 1, d, dtype=dtype, device=device)
        k, v = kvp[:, :hkv], kvp[:, hkv + 1 :]
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo, kv, hq, hkv, d, **plan)
    out, lse = wrapper.run_return_lse(q, k, v)
    _check(out, lse, _expect(q, _split(k, kv), _split(v, kv), qo, dtype, masks=masks, **kw), feature)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("mode", ["causal", "window", "mask", "paged_fp8"])
def test_batch_prefill_soft_cap_masked(device, head_dim, mode):
    """A soft cap beside masked keys, at every head dim: a masked key stays out after the cap (capped, -inf would
    become -cap), rows that see no key keep lse = -inf, and queries scaled so that scores pass the cap saturate it."""
    dtype, hkv, group, cap = torch.bfloat16, 2, 4, 3.0
    hq = hkv * group
    g = torch.Generator().manual_seed(11)
    q, k, v, qo, kv = _ragged(PAIRS, hq, hkv, head_dim, dtype, device, seed=12)
    q = q * 4
    kw = dict(sm_scale=1 / math.sqrt(head_dim), logits_soft_cap=cap, causal=mode != "mask")
    plan, masks = dict(logits_soft_cap=cap, causal=mode != "mask"), None
    if mode == "window":
        plan["window_left"] = kw["window_left"] = 6
    elif mode == "mask":
        masks = _random_masks(PAIRS, g, 0.4, plan, device)
    if mode == "paged_fp8":
        out, lse, ks, vs = _paged(PAIRS, q, qo, hkv, head_dim, torch.float8_e4m3fn, device, g, plan)
    else:
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
        wrapper.plan(qo, kv, hq, hkv, head_dim, **plan)
        out, lse = wrapper.run(q, k, v, return_lse=True)
        ks, vs = _split(k, kv), _split(v, kv)
    _check(out, lse, _expect(q, ks, vs, qo, dtype, masks=masks, **kw), f"soft cap {mode}")


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("rise", ["steps", "spikes"])
def test_batch_prefill_running_max(device, head_dim, rise):
    """Row maxima that rise late in the KV range, by different amounts in the rows of one tile: the online softmax
    must move its running maximum and rescale what it has summed. steps: keys scaled up by quarters of each request
    (scores up to ~13 x the first quarter's); spikes: a few late keys scaled 40x, so that some rows' scores jump by
    more than 128 in log2 units within one tile (exp2 against the old maximum would overflow float32)."""
    dtype, hkv, group = torch.float16, 2, 4
    pairs = [(40, 700), (1, 500), (129, 300), (17, 64)]
    q, k, v, qo, kv = _ragged(pairs, hkv * group, hkv, head_dim, dtype, device, seed=21)
    g = torch.Generator().manual_seed(22)
    scale = []
    for _, n in pairs:
        pos = torch.arange(n, dtype=torch.float64) / n
        if rise == "steps":
            scale.append(1 + 4 * torch.floor(4 * pos))
        else:
            scale.append(torch.where((pos > 0.6) & (torch.rand(n, generator=g) < 0.02), 40.0, 1.0))
    k = (k.double() * torch.cat(scale).to(device)[:, None, None]).to(dtype)
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo, kv, hkv * group, hkv, head_dim, causal=True)
    out, lse = wrapper.run(q, k, v, return_lse=True)
    _check(out, lse, _expect(q, _split(k, kv), _split(v, kv), qo, dtype, sm_scale=1 / math.sqrt(head_dim),
                             causal=True), f"running max {rise}")


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("form", ["ragged", "paged"])
def test_batch_prefill_fp8_kv(device, kv_dtype, dtype, head_dim, form):
    """fp8 K/V under 16-bit queries, with k_scale and v_scale: equal to the reference over the dequantised cache."""
    hkv, group, k_scale, v_scale = 2, 4, 0.5, 2.0
    hq = hkv * group
    g = torch.Generator().manual_seed(8)
    qo = torch.tensor([0] + [a for a, _ in PAIRS]).cumsum(0).to(torch.int32)
    q = torch.randn(int(qo[-1]), hq, head_dim, generator=g).to(dtype).to(device)
    if form == "ragged":
        kv = torch.tensor([0] + [b for _, b in PAIRS]).cumsum(0).to(torch.int32)
        k, v = ((torch.randn(int(kv[-1]), hkv, head_dim, generator=g) * 2).to(kv_dtype).to(device) for _ in range(2))
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
        wrapper.plan(qo.to(device), kv.to(device), hq, hkv, head_dim, causal=True)
        out, lse = wrapper.run(q, k, v, k_scale=k_scale, v_scale=v_scale, return_lse=True)
        ks, vs = _split(k.float(), kv), _split(v.float(), kv)
    else:
        out, lse, ks, vs = _paged(PAIRS, q, qo, hkv, head_dim, kv_dtype, device, g, dict(causal=True),
                                  dict(k_scale=k_scale, v_scale=v_scale))
    ks, vs = [x.cpu() * k_scale for x in ks], [x.cpu() * v_scale for x in vs]
    _check(out, lse, _expect(q, ks, vs, qo, dtype, sm_scale=1 / math.sqrt(head_dim), causal=True), f"fp8 {form}")


# Few query tokens against a long KV: with one kv head and a group of 4 the row tiles fill a handful of blocks, so
# the CUDA launcher cuts each tile's KV range into splits (about kv rows / batch / 256 of them) merged on the device.
# Covers a request whose KV is empty (every split empty), an empty query, one token, and a split edge at each page.
SPLIT_PAIRS = [(16, 3000), (0, 40), (1, 2500), (9, 0), (40, 1037)]


@pytest.mark.parametrize("form", ["ragged", "paged"])
@pytest.mark.parametrize("feature", ["plain", "causal", "window", "mask", "soft_cap"])
def test_batch_prefill_kv_splits(device, form, feature):
    dtype, d, hkv, group, page = torch.bfloat16, 128, 1, 4, 16
    hq = hkv * group
    g = torch.Generator().manual_seed(6)
    kw, plan, masks = dict(sm_scale=1 / math.sqrt(d)), {}, None
    if feature in ("causal", "window"):
        plan["causal"] = kw["causal"] = True
    if feature == "window":
        plan["window_left"] = kw["window_left"] = 700
    elif feature == "mask":
        masks = _random_masks(SPLIT_PAIRS, g, 0.3, plan, device)
    elif feature == "soft_cap":
        plan["logits_soft_cap"] = kw["logits_soft_cap"] = 5.0
    q, k, v, qo, kv = _ragged(SPLIT_PAIRS, hq, hkv, d, dtype, device, seed=7)
    poison_allocator(device, 64 * q.numel() * 4)
    if form == "ragged":
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
        wrapper.plan(qo, kv, hq, hkv, d, **plan)
        out, lse = wrapper.run(q, k, v, return_lse=True)
        ks, vs = _split(k, kv), _split(v, kv)
    else:
        out, lse, ks, vs = _paged(SPLIT_PAIRS, q, qo, hkv, d, dtype, device, g, plan, page=page)
    _check(out, lse, _expect(q, ks, vs, qo, dtype, masks=masks, **kw), f"{form} splits {feature}")


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("form", ["ragged", "ragged_non_causal", "paged", "paged_fp8", "kv_splits"])
def test_batch_prefill_rope_llama(device, head_dim, form):
    """pos_encoding_mode="ROPE_LLAMA": query i of a request rotated to kv_len - qo_len + i and key j to j inside the
    kernel (the cache keeps unrotated keys), with the plan's rope_scale and rope_theta; across KV splits too."""
    dtype, group = torch.bfloat16, 4
    hkv = 1 if form == "kv_splits" else 2
    pairs = SPLIT_PAIRS if form == "kv_splits" else PAIRS
    rope = (2.0, 5e5)
    causal = form != "ragged_non_causal"
    plan = dict(causal=causal, pos_encoding_mode="ROPE_LLAMA", rope_scale=rope[0], rope_theta=rope[1])
    g = torch.Generator().manual_seed(10)
    q, k, v, qo, kv = _ragged(pairs, hkv * group, hkv, head_dim, dtype, device, seed=10)
    if form.startswith("ragged"):
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
        wrapper.plan(qo, kv, hkv * group, hkv, head_dim, **plan)
        out, lse = wrapper.run(q, k, v, return_lse=True)
        ks, vs = _split(k, kv), _split(v, kv)
    else:
        kv_dtype = torch.float8_e4m3fn if form == "paged_fp8" else dtype
        out, lse, ks, vs = _paged(pairs, q, qo, hkv, head_dim, kv_dtype, device, g, plan)
    _check(out, lse, _expect(q, ks, vs, qo, dtype, sm_scale=1 / math.sqrt(head_dim), causal=causal, rope=rope),
           f"rope {form}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batch_prefill_rope_fp8_range(device, dtype):
    """e5m2 K and V at the top of their range (+-57344; a pair rotated by 45 degrees reaches 81100, past f16's 65504),
    brought back by k_scale and v_scale: the rotation must not overflow on its way to the mma."""
    hkv, group, d, scale, rope = 2, 4, 128, 2.0**-16, (1.0, 1e4)
    q, k, v, qo, kv = _ragged(PAIRS, hkv * group, hkv, d, dtype, device, seed=11)
    g = torch.Generator().manual_seed(12)
    k, v = (((torch.randint(0, 2, x.shape, generator=g) * 2 - 1) * 57344.0).to(torch.float8_e5m2).to(device)
            for x in (k, v))
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo, kv, hkv * group, hkv, d, causal=True, pos_encoding_mode="ROPE_LLAMA", rope_scale=rope[0],
                 rope_theta=rope[1])
    out, lse = wrapper.run(q, k, v, k_scale=scale, v_scale=scale, return_lse=True)
    ks, vs = ([x.cpu().double() * scale for x in _split(t, kv)] for t in (k, v))
    _check(out, lse, _expect(q, ks, vs, qo, dtype, sm_scale=1 / math.sqrt(d), causal=True, rope=rope),
           "rope fp8 range")


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("mode", ["causal", "mask", "plain", "rope"])
def test_single_prefill(device, layout, mode):
    dtype, d, hq, hkv, qo_len, kv_len = torch.bfloat16, 128, 8, 2, 37, 90
    g = torch.Generator().manual_seed(4)
    q = torch.randn(qo_len, hq, d, generator=g).to(dtype).to(device)
    k = torch.randn(kv_len, hkv, d, generator=g).to(dtype).to(device)
    v = torch.randn(kv_len, hkv, d, generator=g).to(dtype).to(device)
    mask = torch.rand(qo_len, kv_len, generator=g) < 0.5
    kk, vv = (k, v) if layout == "NHD" else (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous())
    kw, rkw = {
        "causal": (dict(causal=True), dict(causal=True)),
        "mask": (dict(custom_mask=mask.to(device)), dict(mask=mask)),
        "plain": ({}, {}),
        "rope": (dict(causal=True, pos_encoding_mode="ROPE_LLAMA"), dict(causal=True, rope=(1.0, 1e4))),
    }[mode]
    out, lse = flashinfer.single_prefill_with_kv_cache_return_lse(q, kk, vv, kv_layout=layout, **kw)
    e_out, e_lse = ref.prefill_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(d), **rkw)
    b_out, b_lse = ref.prefill_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(d), dtype=dtype, **rkw)
    assert_matches(out, e_out, b_out, "single prefill")
    assert_matches(lse, e_lse, b_lse, "single prefill lse")


@pytest.mark.parametrize("head_dim", [64, 128])
def test_single_prefill_short_packed_mask(device, head_dim):
    """A packed mask shorter than qo_len * kv_len bits: the bits past its end count as masked. The cut falls inside a
    row, rows start at every bit offset (kv_len 90), and the rows past the cut see no key (out 0, lse -inf)."""
    dtype, hq, hkv, qo_len, kv_len = torch.bfloat16, 4, 2, 37, 90
    g = torch.Generator().manual_seed(11)
    q = torch.randn(qo_len, hq, head_dim, generator=g).to(dtype).to(device)
    k = torch.randn(kv_len, hkv, head_dim, generator=g).to(dtype).to(device)
    v = torch.randn(kv_len, hkv, head_dim, generator=g).to(dtype).to(device)
    mask = torch.rand(qo_len, kv_len, generator=g) < 0.7
    nbytes = qo_len * kv_len // 8 * 2 // 3
    packed = flashinfer.packbits(mask.reshape(-1), "little")[:nbytes]
    seen = mask.reshape(-1).clone()
    seen[nbytes * 8 :] = False
    out, lse = flashinfer.single_prefill_with_kv_cache_return_lse(q, k, v, packed_custom_mask=packed.to(device))
    rkw = dict(mask=seen.reshape(qo_len, kv_len))
    e_out, e_lse = ref.prefill_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(head_dim), **rkw)
    b_out, b_lse = ref.prefill_one(q.cpu(), k.cpu(), v.cpu(), 1 / math.sqrt(head_dim), dtype=dtype, **rkw)
    assert not torch.isfinite(e_lse[-1]).any(), "the last rows must lie past the cut"
    _check(out, lse, (e_out, e_lse, b_out, b_lse), "short packed mask")


def test_packbits():
    x = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert flashinfer.packbits(x, "little").tolist() == [0b00001101, 0b00000011]
    assert flashinfer.packbits(x, "big").tolist() == [0b10110000, 0b11000000]
    packed, indptr = flashinfer.segment_packbits(x, torch.tensor([0, 3, 10]), "little")
    assert packed.tolist() == [0b101, 0b1100001] and indptr.tolist() == [0, 1, 2]


def test_prefill_wrapper_compiles_fullgraph(device):
    d, hkv, group = 64, 2, 2
    q, k, v, qo, kv = _ragged([(5, 9), (30, 30), (2, 40)], hkv * group, hkv, d, torch.bfloat16, device)
    wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
    wrapper.plan(qo, kv, hkv * group, hkv, d, causal=True)
    expect = wrapper.run(q, k, v)
    torch._dynamo.reset()
    got = torch.compile(lambda q, k, v: wrapper.run(q, k, v), fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, expect)


class _Prefill(torch.nn.Module):
    def forward(self, q, k, v, qo_indptr, kv_indptr):
        return torch.ops.flashinfer.batch_prefill_with_ragged_kv_cache(
            q, qo_indptr, k, v, kv_indptr, None, None, "NHD", True, -1, 0.0, q.shape[-1] ** -0.5, 1.0, 1.0)[0]


def test_export_prefill(device):
    d, hkv, group = 64, 2, 2
    q, k, v, qo, kv = _ragged([(5, 9), (30, 30), (2, 40)], hkv * group, hkv, d, torch.bfloat16, device)
    tq, tk, b = torch.export.Dim("tq", min=2, max=4096), torch.export.Dim("tk", min=2, max=4096), \
        torch.export.Dim("b", min=1, max=64)
    dyn = ({0: tq}, {0: tk}, {0: tk}, {0: b + 1}, {0: b + 1})
    ep = torch.export.export(_Prefill(), (q, k, v, qo, kv), dynamic_shapes=dyn)
    torch.testing.assert_close(ep.module()(q, k, v, qo, kv), _Prefill()(q, k, v, qo, kv))


@pytest.mark.parametrize("case,msg", [
    ("int64_indptr", r"qo_indptr must be 1-D int32"),
    ("head_dim", r"unsupported head_dim 96: supported 64, 128, 256"),
    ("group", r"num_qo_heads \(6\) must be a multiple of num_kv_heads \(4\)"),
    ("kv_dtype", r"the KV cache must have the dtype of q \(BFloat16\) or be float8_e4m3fn / float8_e5m2, got Float"),
    ("mask_alone", r"packed_custom_mask and mask_indptr must be given together"),
    ("rope_scale", r"rope_scale must be positive, got 0"),
    ("rows", r"q must hold at most 2\^31 - 257 \(token, head\) rows, got 536870912 x 4"),
])
def test_prefill_bad_input_named(device, case, msg):
    d = 96 if case == "head_dim" else 64
    hq, hkv = (6, 4) if case == "group" else (4, 2)
    q = torch.randn(4, hq, d, dtype=torch.bfloat16, device=device)
    if case == "rows":  # 2^31 (token, head) rows as a broadcast view: no memory behind them
        q = q[:1].expand(2 ** 29, hq, d)
    k = torch.randn(6, hkv, d, dtype=torch.bfloat16, device=device)
    if case == "kv_dtype":
        k = k.float()
    qo = torch.tensor([0, q.shape[0]], dtype=torch.int64 if case == "int64_indptr" else torch.int32, device=device)
    kv = torch.tensor([0, 6], dtype=torch.int32, device=device)
    mask = torch.ones(3, dtype=torch.uint8, device=device) if case == "mask_alone" else None
    with pytest.raises(RuntimeError, match=r"batch_prefill_with_ragged_kv_cache: " + msg):
        torch.ops.flashinfer.batch_prefill_with_ragged_kv_cache(q, qo, k, k, kv, mask, None, "NHD", True, -1, 0.0,
                                                                0.1, 1.0, 1.0, case == "rope_scale", 0.0)


_i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
# (form, plan's table arguments, expected message): each table wrong in one way.
VALIDATE_CASES = {
    "qo backwards": ("paged", dict(qo=[0, 5, 3]), r"qo_indptr must be non-decreasing: qo_indptr\[2\]=3 < "
                                                   r"qo_indptr\[1\]=5"),
    "qo length": ("paged", dict(qo=[0, 5]), r"qo_indptr must have batch_size \+ 1 = 3 entries, got 2"),
    "page id": ("paged", dict(indices=[3, -2, 1]), r"kv_indices\[1\]=-2 is not a page of the cache \(>= 0\)"),
    "last page": ("paged", dict(last=[0, 4]), r"kv_last_page_len\[0\]=0 must be in \[1, page_size=16\]"),
    "kv past table": ("paged", dict(kv=[0, 2, 4]), r"kv_indptr\[-1\]=4 exceeds the 3 entries of kv_indices"),
    "ragged qo start": ("ragged", dict(qo=[-1, 5, 9]), r"qo_indptr\[0\] must be >= 0, got -1"),
    "ragged kv backwards": ("ragged", dict(kv=[0, 40, 30]), r"kv_indptr must be non-decreasing"),
}


@pytest.mark.parametrize("case", sorted(VALIDATE_CASES))
def test_plan_validate_names_the_bad_entry(case):
    """plan(validate=True) reads the tables on the host and names the first bad entry; without it the same tables
    are recorded as they are (the kernels mask what falls outside the cache)."""
    form, bad, msg = VALIDATE_CASES[case]
    t = dict(qo=[0, 5, 9], kv=[0, 2, 3], indices=[3, 0, 1], last=[16, 4]) if form == "paged" else \
        dict(qo=[0, 5, 9], kv=[0, 40, 70])
    t.update(bad)
    if form == "paged":
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1))
        args = (_i32(t["qo"]), _i32(t["kv"]), _i32(t["indices"]), _i32(t["last"]), 4, 2, 64, 16)
    else:
        wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1))
        args = (_i32(t["qo"]), _i32(t["kv"]), 4, 2, 64)
    with pytest.raises(ValueError, match=msg):
        wrapper.plan(*args, causal=True, validate=True)
    wrapper.plan(*args, causal=True)


GRAPH_CASES = {
    # (captured query rows, pages, first plan, the plans replayed)
    "tiles": (256, 64, [(60, 60), (60, 100), (60, 300), (60, 61)],
              [[(1, 1), (100, 500), (0, 7), (3, 3)], [(64, 64), (64, 64), (64, 64), (64, 64)],
               [(7, 600), (0, 0), (200, 230), (1, 1)]]),
    # few query rows against a cache of 16k tokens: the launch is captured with KV splits
    "kv_splits": (32, 1024, [(8, 4000), (8, 100), (8, 2000), (8, 9)],
                  [[(1, 5000), (20, 7000), (0, 300), (3, 3)], [(8, 16), (8, 17), (8, 4000), (8, 1)],
                   [(2, 0), (0, 0), (30, 12000), (0, 50)]]),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_prefill_graph_replay_with_new_lengths(case):
    """A paged prefill captured once with fixed buffers, replayed for batches of other lengths (up to the captured
    number of query tokens): each replay equals eager."""
    max_q, num_pages, first, steps = GRAPH_CASES[case]
    dev, dtype, d, hkv, group, page = "cuda", torch.bfloat16, 128, 2, 4, 16
    cache = torch.randn(num_pages, 2, page, hkv, d, dtype=dtype, device=dev)
    bufs = dict(qo_indptr_buf=torch.zeros(5, dtype=torch.int32, device=dev),
                paged_kv_indptr_buf=torch.zeros(5, dtype=torch.int32, device=dev),
                paged_kv_indices_buf=torch.zeros(num_pages, dtype=torch.int32, device=dev),
                paged_kv_last_page_len_buf=torch.zeros(4, dtype=torch.int32, device=dev))
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1, device=dev), use_cuda_graph=True, **bufs)
    q = torch.randn(max_q, hkv * group, d, dtype=dtype, device=dev)

    def plan(pairs, seed):
        g = torch.Generator().manual_seed(seed)
        qo = torch.tensor([0] + [a for a, _ in pairs]).cumsum(0).to(torch.int32)
        indptr, last = page_table([b for _, b in pairs], page)
        indices = torch.randperm(num_pages, generator=g)[: int(indptr[-1])].to(torch.int32)
        wrapper.plan(qo, indptr, indices, last, hkv * group, hkv, d, page, causal=True)
        return qo

    plan(first, 0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        wrapper.run(q, cache)  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = wrapper.run(q, cache)
    for step, pairs in enumerate(steps):
        qo = plan(pairs, step + 1)
        graph.replay()
        n = int(qo[-1])
        torch.testing.assert_close(out[:n], wrapper.run(q, cache)[:n])


def test_prefill_upstream_arguments(device):
    """Upstream 0.6 arguments beyond the core ones: o_data_type casts the output, the paged legacy forward takes
    k_scale / v_scale in upstream's positions, and arguments with no implementation here raise when set."""
    d, hkv, group, page = 64, 2, 2, 16
    pairs = [(5, 9), (30, 30), (2, 40)]
    g = torch.Generator().manual_seed(9)
    q, k, v, qo, kv = _ragged(pairs, hkv * group, hkv, d, torch.bfloat16, device)
    ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1, device=device))
    ragged.plan(qo, kv, hkv * group, hkv, d, causal=True)
    expect = ragged.run(q, k, v)
    ragged.plan(qo, kv, hkv * group, hkv, d, causal=True, o_data_type="float32")
    got = ragged.run(q, k, v)
    assert got.dtype == torch.float32 and torch.equal(got, expect.float())
    with pytest.raises(NotImplementedError, match="o_scale is not supported"):
        ragged.run(q, k, v, o_scale=0.5)
    torch.testing.assert_close(ragged.run(q, k, v, o_scale=1.0), got, rtol=0, atol=0)

    indptr, last = page_table([b for _, b in pairs], page)
    cache = paged_cache(int(indptr[-1]), page, hkv, d, torch.bfloat16, device, generator=g)
    indices = torch.arange(int(indptr[-1]), dtype=torch.int32)
    paged = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1, device=device))
    paged.plan(qo, indptr.to(device), indices.to(device), last.to(device), hkv * group, hkv, d, page, causal=True)
    expect_paged = paged.run(q, cache)
    scaled = paged.run(q, cache, k_scale=0.5, v_scale=2.0)
    legacy = paged.forward(q, cache, True, "NONE", False, 0.5, 2.0)
    torch.testing.assert_close(legacy, scaled, rtol=0, atol=0)
    # the legacy forward's pos_encoding_mode / rope_theta reach the kernel as plan()'s do
    paged.plan(qo, indptr.to(device), indices.to(device), last.to(device), hkv * group, hkv, d, page, causal=True,
               pos_encoding_mode="ROPE_LLAMA", rope_theta=5e5)
    torch.testing.assert_close(paged.forward(q, cache, True, "ROPE_LLAMA", rope_theta=5e5), paged.run(q, cache),
                               rtol=0, atol=0)
    # scheduler hints and other backends' descriptions of the batch are accepted and change nothing; the
    # multi-item scoring arguments (a different mask) raise; a misspelt argument is a TypeError, as upstream
    paged.plan(qo, indptr.to(device), indices.to(device), last.to(device), hkv * group, hkv, d, page, causal=True,
               seq_lens=torch.tensor([b for _, b in pairs], dtype=torch.int32, device=device),
               fixed_split_size=64, disable_split_kv=True)
    torch.testing.assert_close(paged.run(q, cache), expect_paged, rtol=0, atol=0)
    for kw in (dict(token_pos_in_items_ptr=qo), dict(prefix_len_ptr=qo), dict(token_pos_in_items_len=3)):
        with pytest.raises(NotImplementedError, match=f"{next(iter(kw))} is not supported"):
            paged.plan(qo, indptr.to(device), indices.to(device), last.to(device), hkv * group, hkv, d, page, **kw)
    with pytest.raises(NotImplementedError, match="v_indptr is not supported"):
        ragged.plan(qo, kv, hkv * group, hkv, d, v_indptr=kv)
    with pytest.raises(TypeError):
        ragged.plan(qo, kv, hkv * group, hkv, d, casual=True)
    for name in ("sinks", "kv_block_scales"):
        with pytest.raises(NotImplementedError, match=f"{name} is not supported"):
            paged.run(q, cache, **{name: torch.zeros(hkv * group, device=device)})
    with pytest.raises(NotImplementedError, match="jit_args / jit_kwargs"):
        flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(1, device=device), jit_kwargs={})
