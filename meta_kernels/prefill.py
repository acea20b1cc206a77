"""Fakes of batch prefill: out has q's shape and dtype, lse is fp32 [total_q, num_qo_heads]."""

import torch

from . import checks
from .page import paged_cache_heads_dim


def _check_prefill(q, qo_indptr, hkv, kv_dim, kv_dtype, kv_device, batch, mask, mask_indptr, rope, op):
    checks.attention_q(q, hkv, kv_dim, "the KV cache", op)
    rope_llama, rope_scale, rope_theta = rope
    if rope_llama:
        checks.rope_freq(rope_scale, rope_theta, op)
    checks.check(kv_dtype in (q.dtype, torch.float8_e4m3fn, torch.float8_e5m2), op,
                 f"the KV cache must have the dtype of q ({checks.dtype_name(q.dtype)}) or be float8_e4m3fn / "
                 f"float8_e5m2, got {checks.dtype_name(kv_dtype)}")
    checks.check(kv_device == q.device, op, f"the KV cache must be on the same device as q ({q.device}), got "
                 f"{kv_device}")
    checks.int_vector(qo_indptr, "qo_indptr", q, op)
    checks.check(qo_indptr.shape[0] == batch + 1, op,
                 f"qo_indptr must have batch_size + 1 = {batch + 1} entries, got {qo_indptr.shape[0]}")
    checks.check((mask is None) == (mask_indptr is None), op,
                 "packed_custom_mask and mask_indptr must be given together")
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


@torch.library.register_fake("flashinfer::batch_prefill_with_paged_kv_cache")
def batch_prefill_with_paged_kv_cache(q, qo_indptr, paged_k_cache, paged_v_cache, kv_indptr, kv_indices,
                                      kv_last_page_len, packed_custom_mask, mask_indptr, kv_layout, causal,
                                      window_left, logits_soft_cap, sm_scale, k_scale, v_scale, rope_llama=False,
                                      rope_scale=1.0, rope_theta=1e4):
    op = "batch_prefill_with_paged_kv_cache"
    hkv, d = paged_cache_heads_dim(paged_k_cache, paged_v_cache, kv_layout, op)
    return _check_prefill(q, qo_indptr, hkv, d, paged_k_cache.dtype, paged_k_cache.device,
                          kv_last_page_len.shape[0], packed_custom_mask, mask_indptr,
                          (rope_llama, rope_scale, rope_theta), op)


@torch.library.register_fake("flashinfer::batch_prefill_with_ragged_kv_cache")
def batch_prefill_with_ragged_kv_cache(q, qo_indptr, k, v, kv_indptr, packed_custom_mask, mask_indptr, kv_layout,
                                       causal, window_left, logits_soft_cap, sm_scale, k_scale, v_scale,
                                       rope_llama=False, rope_scale=1.0, rope_theta=1e4):
    op = "batch_prefill_with_ragged_kv_cache"
    checks.check(kv_layout in ("NHD", "HND"), op, f'kv_layout must be "NHD" or "HND", got "{kv_layout}"')
    checks.check(k.dim() == 3, op, f"k must be 3-D, got shape {list(k.shape)}")
    checks.check(v.shape == k.shape, op, f"v must have the shape of k ({list(k.shape)}), got {list(v.shape)}")
    checks.int_vector(kv_indptr, "kv_indptr", q, op)
    hkv = k.shape[1] if kv_layout == "NHD" else k.shape[0]
    return _check_prefill(q, qo_indptr, hkv, k.shape[2], k.dtype, k.device, kv_indptr.shape[0] - 1,
                          packed_custom_mask, mask_indptr, (rope_llama, rope_scale, rope_theta), op)
