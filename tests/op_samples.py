"""Sample arguments for every torch.ops.flashinfer op (used by opcheck and the registry test).

SAMPLES maps an op name to a function (device) -> list of (args, kwargs). Adding an op without samples fails
test_every_op_has_samples, so no op can skip opcheck.
"""

import torch


def _norm(device):
    out = []
    for dtype, shape, layout in [(torch.bfloat16, (3, 256), None), (torch.float32, (2, 4, 100), None),
                                 (torch.float16, (5, 3, 64), "heads")]:
        if layout == "heads":
            x = torch.randn(shape[0], (shape[1] + 1) * shape[2], dtype=dtype, device=device)[:, : shape[1] * shape[2]]
            x = x.view(shape)
        else:
            x = torch.randn(shape, dtype=dtype, device=device)
        out.append((x, torch.randn(shape[-1], dtype=dtype, device=device)))
    return out


def rmsnorm(device):
    return [((x, w, 1e-6, g), {}) for (x, w), g in zip(_norm(device), (False, True, False))]


def rmsnorm_out(device):
    return [((torch.empty(x.shape, dtype=x.dtype, device=device), x, w, 1e-5, g), {})
            for (x, w), g in zip(_norm(device), (True, False, False))]


def fused_add_rmsnorm(device):
    return [((x.clone(), torch.randn_like(x), w, 1e-6, g), {}) for (x, w), g in zip(_norm(device), (False, True, True))]


def layernorm(device):
    return [((x, torch.randn(x.shape[-1], device=device), torch.randn(x.shape[-1], device=device), 1e-5), {})
            for x, _ in _norm(device)]


def _act(device):
    return [torch.randn(4, 256, dtype=torch.bfloat16, device=device),
            torch.randn(2, 3, 100, dtype=torch.float32, device=device)]


def _act_fn(name):
    return lambda device: [((x,), {}) for x in _act(device)]


def _act_out_fn(name):
    def samples(device):
        return [((torch.empty(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype, device=device), x), {})
                for x in _act(device)]
    return samples


_FREQ = [(1.0, 1e4, False, 1.0, 4.0, 8192.0), (8.0, 5e5, True, 1.0, 4.0, 8192.0)]


def _qk(device, dtype=torch.bfloat16):
    qkv = torch.randn(7, (4 + 2 * 2) * 64, dtype=dtype, device=device)
    return qkv[:, : 4 * 64].view(7, 4, 64), qkv[:, 4 * 64 : 6 * 64].view(7, 2, 64)


def _ragged(device):
    return (torch.tensor([0, 3, 3, 7], dtype=torch.int32, device=device),
            torch.tensor([5, 0, 100], dtype=torch.int32, device=device))


def apply_rope(device, inplace=False):
    out = []
    for (rot, il), freq in zip([(64, False), (32, True)], _FREQ):
        q, k = _qk(device)
        if inplace:
            q, k = q.clone(), k.clone()
        out.append(((q, k, *_ragged(device), rot, il, *freq), {}))
    return out


def apply_rope_pos_ids(device, inplace=False):
    out = []
    for (rot, il, pdt), freq in zip([(64, True, torch.int32), (48, False, torch.int64)], _FREQ):
        q, k = _qk(device, torch.float16)
        if inplace:
            q, k = q.clone(), k.clone()
        pos = torch.randint(0, 1000, (7,), dtype=pdt, device=device)
        out.append(((q, k, pos, rot, il, *freq), {}))
    return out


def apply_rope_with_cos_sin_cache(device, inplace=False):
    cache = torch.randn(64, 32, device=device)
    out = []
    for flat, neox in [(True, True), (False, False)]:
        q = torch.randn(7, 4, 64, dtype=torch.bfloat16, device=device)
        k = torch.randn(7, 2, 64, dtype=torch.bfloat16, device=device)
        if flat:
            q, k = q.flatten(1), k.flatten(1)
        pos = torch.randint(0, 64, (7,), device=device)
        out.append(((pos, q, k, 64, cache, neox), {}))
    return out


def append_paged_kv_cache(device):
    out = []
    for layout, form in (("NHD", "5d"), ("HND", "tuple")):
        shape = (6, 2, 4, 2, 64) if layout == "NHD" else (6, 2, 2, 4, 64)
        cache = torch.randn(shape, dtype=torch.float16, device=device)
        k, v = (cache, None) if form == "5d" else (cache[:, 0].clone(), cache[:, 1].clone())
        key = torch.randn(3, 2, 64, dtype=torch.float16, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        out.append(((key, torch.randn_like(key), torch.tensor([0, 1, 1], **i32), torch.tensor([5, 0, 2], **i32), k, v,
                     torch.tensor([3, 1, 4], **i32), torch.tensor([0, 2, 3], **i32), torch.tensor([2, 3], **i32),
                     layout), {}))
    return out


def get_batch_indices_positions(device):
    i32 = dict(dtype=torch.int32, device=device)
    return [((torch.tensor([0, 2, 2, 5], **i32), torch.tensor([9, 1, 3], **i32), 6), {})]


def get_seq_lens(device):
    i32 = dict(dtype=torch.int32, device=device)
    return [((torch.tensor([0, 2, 2, 5], **i32), torch.tensor([3, 0, 16], **i32), 16), {})]


def batch_decode_with_paged_kv_cache(device):
    i32 = dict(dtype=torch.int32, device=device)
    tables = (torch.tensor([0, 2, 2, 3], **i32), torch.tensor([3, 0, 1], **i32), torch.tensor([5, 0, 16], **i32))
    out = []
    # RoPE on both kernels: tensor cores (the default; 16-bit K rotated in place, fp8 K into an f16 tile) and CUDA
    # cores.
    bf16, e4m3 = torch.bfloat16, torch.float8_e4m3fn
    for layout, form, rope, d, backend, kv in (("NHD", "5d", False, 64, "auto", bf16),
                                               ("HND", "tuple", True, 128, "cuda_core", bf16),
                                               ("NHD", "5d", True, 128, "auto", bf16),
                                               ("NHD", "5d", True, 64, "auto", e4m3)):
        shape = (4, 2, 16, 2, d) if layout == "NHD" else (4, 2, 2, 16, d)
        cache = torch.randn(shape, device=device).to(kv)
        k, v = (cache, None) if form == "5d" else (cache[:, 0].clone(), cache[:, 1].clone())
        q = torch.randn(3, 4, d, dtype=torch.bfloat16, device=device)
        out.append(((q, k, v, *tables, layout, rope, 7 if rope else -1, 0.0 if rope else 30.0, d ** -0.5, 1.0, 1.0,
                     1.0, 1e4), {} if backend == "auto" else {"backend": backend}))
    return out


def _prefill_tables(device):
    i32 = dict(dtype=torch.int32, device=device)
    # requests (qo, kv): (3, 5), (0, 2), (4, 4); a mask of bits for every (query, key) pair, byte-aligned segments.
    return (torch.tensor([0, 3, 3, 7], **i32), torch.tensor([0, 5, 7, 11], **i32),
            torch.randint(0, 256, (5,), dtype=torch.uint8, device=device), torch.tensor([0, 2, 2, 4], **i32))


def batch_prefill_with_ragged_kv_cache(device):
    qo, kv, mask, mask_indptr = _prefill_tables(device)
    out = []
    for d, m in ((64, False), (128, True)):
        q = torch.randn(7, 4, d, dtype=torch.bfloat16, device=device)
        k = torch.randn(11, 2, d, dtype=torch.bfloat16, device=device)
        v = torch.randn(11, 2, d, dtype=torch.bfloat16, device=device)
        # the masked sample also rotates q and k (ROPE_LLAMA)
        out.append(((q, qo, k, v, kv, mask if m else None, mask_indptr if m else None, "NHD", not m, 3 if m else -1,
                     0.0 if m else 20.0, d ** -0.5, 1.0, 1.0, m, 2.0, 5e5), {}))
    return out


def batch_prefill_with_paged_kv_cache(device):
    qo, _, mask, mask_indptr = _prefill_tables(device)
    i32 = dict(dtype=torch.int32, device=device)
    indptr, indices, last = (torch.tensor([0, 2, 3, 4], **i32), torch.tensor([4, 0, 2, 1], **i32),
                             torch.tensor([1, 2, 4], **i32))
    out = []
    for layout, form, m, kv_dtype in (("NHD", "5d", False, torch.float16), ("HND", "tuple", True, torch.float16),
                                      ("NHD", "5d", False, torch.float8_e4m3fn)):
        shape = (5, 2, 4, 2, 64) if layout == "NHD" else (5, 2, 2, 4, 64)
        cache = torch.randn(shape, dtype=torch.float16, device=device).to(kv_dtype)
        k, v = (cache, None) if form == "5d" else (cache[:, 0].clone(), cache[:, 1].clone())
        q = torch.randn(7, 4, 64, dtype=torch.float16, device=device)
        scales = (0.5, 2.0) if kv_dtype != torch.float16 else (1.0, 1.0)
        out.append(((q, qo, k, v, indptr, indices, last, mask if m else None, mask_indptr if m else None, layout,
                     not m, -1, 0.0, 0.125, *scales), {}))
    return out


def _states(device, n=None):
    """Attention states: v [seq, H, D] (or [seq, n, H, D]) and s float32 with a -inf row (no key)."""
    out = []
    for dtype, d in [(torch.bfloat16, 128), (torch.float32, 7)]:
        lead = (5,) if n is None else (5, n)
        v = torch.randn(*lead, 3, d, device=device).to(dtype)
        s = torch.randn(*lead, 3, device=device) * 10
        s[0] = float("-inf")
        out.append((v, s))
    return out


def merge_state(device):
    return [((va, sa, vb, sb), {}) for (va, sa), (vb, sb) in zip(_states(device), _states(device))]


def merge_state_in_place(device):
    mask = torch.tensor([True, False, True, True, False], device=device)
    return [((va.clone(), sa.clone(), vb, sb), {"mask": m})
            for ((va, sa), (vb, sb)), m in zip(zip(_states(device), _states(device)), (None, mask))]


def merge_states(device):
    return [((v, s), {}) for v, s in _states(device, 4)] + [((v, s), {}) for v, s in _states(device, 0)[:1]]


def _dists(device):
    """Rows of probabilities (a strided view among them) and of logits with -inf entries."""
    probs = torch.softmax(torch.randn(4, 40, device=device) * 2, -1)
    wide = torch.softmax(torch.randn(3, 70, device=device), -1)[:, 3:67]
    logits = torch.randn(4, 33, device=device).to(torch.bfloat16)
    logits[0, :5] = float("-inf")
    return probs, wide, logits


def softmax(device):
    _, _, logits = _dists(device)
    t = torch.tensor([1.0, 0.5, 0.0, 2.0], device=device)
    return [((logits, None, 1.0), {}), ((logits.float(), t, 1.0), {})]


def sampling_from_probs(device):
    probs, wide, _ = _dists(device)
    seed, offset = torch.tensor([3], device=device), torch.tensor([9], device=device)
    k = torch.tensor([1, 5, 0, 40], dtype=torch.int32, device=device)
    p = torch.tensor([0.5, 1.0, 0.9, 0.0], device=device)
    idx = torch.tensor([2, 0, 1, 1, 2], dtype=torch.int32, device=device)
    return [((probs, None, k, 0, p, 1.0, None, 0.2, seed, offset), {}),
            ((wide, idx, None, 3, None, 0.8, None, 0.0, seed, offset.expand(5).contiguous()), {})]


def _renorm_samples(device, which):
    probs, wide, logits = _dists(device)
    if which == "k":
        k = torch.tensor([1, 5, 0, 40], dtype=torch.int32, device=device)
        return [((probs, k, 0), {}), ((wide, None, 7), {})]
    if which == "p":
        return [((probs, torch.tensor([0.5, 1.0, 0.9, 0.0], device=device), 1.0), {}), ((wide, None, 0.7), {})]
    return [((logits, None, 4), {}), ((logits.float(), torch.tensor([1, 2, 33, 0], dtype=torch.int32,
                                                                       device=device), 0), {})]


def chain_speculative_sampling(device):
    """Chains of 3 draft tokens (one outside the vocabulary) over a vocabulary of 40, and of none (the bonus draw
    only), per-request seeds in the second."""
    draft = torch.softmax(torch.randn(4, 3, 40, device=device), -1)
    target = torch.softmax(torch.randn(4, 4, 40, device=device), -1)
    ids = torch.randint(0, 40, (4, 3), dtype=torch.int32, device=device)
    ids[1, 0] = 40
    seed, offset = torch.tensor([3], device=device), torch.tensor([9], device=device)
    return [((draft, ids, target, seed, offset), {}),
            ((draft[:, :0], ids[:, :0], target[:, :1], seed.expand(4).contiguous(), offset), {})]


SAMPLES = {
    "softmax": softmax,
    "chain_speculative_sampling": chain_speculative_sampling,
    "sampling_from_probs": sampling_from_probs,
    "top_k_renorm_probs": lambda d: _renorm_samples(d, "k"),
    "top_p_renorm_probs": lambda d: _renorm_samples(d, "p"),
    "top_k_mask_logits": lambda d: _renorm_samples(d, "mask"),
    "batch_prefill_with_ragged_kv_cache": batch_prefill_with_ragged_kv_cache,
    "batch_prefill_with_paged_kv_cache": batch_prefill_with_paged_kv_cache,
    "batch_decode_with_paged_kv_cache": batch_decode_with_paged_kv_cache,
    "append_paged_kv_cache": append_paged_kv_cache,
    "get_batch_indices_positions": get_batch_indices_positions,
    "get_seq_lens": get_seq_lens,
    "merge_state": merge_state,
    "merge_state_in_place": merge_state_in_place,
    "merge_states": merge_states,
    "rmsnorm": rmsnorm,
    "rmsnorm_out": rmsnorm_out,
    "fused_add_rmsnorm": fused_add_rmsnorm,
    "layernorm": layernorm,
    "apply_rope": apply_rope,
    "apply_rope_inplace": lambda d: apply_rope(d, inplace=True),
    "apply_rope_pos_ids": apply_rope_pos_ids,
    "apply_rope_pos_ids_inplace": lambda d: apply_rope_pos_ids(d, inplace=True),
    "apply_rope_with_cos_sin_cache": apply_rope_with_cos_sin_cache,
    "apply_rope_with_cos_sin_cache_inplace": lambda d: apply_rope_with_cos_sin_cache(d, inplace=True),
}
for _name in ("silu_and_mul", "gelu_and_mul", "gelu_tanh_and_mul"):
    SAMPLES[_name] = _act_fn(_name)
    SAMPLES[_name + "_out"] = _act_out_fn(_name)
