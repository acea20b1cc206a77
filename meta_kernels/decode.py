"""Fake of batch decode: out has q's shape and dtype, lse is fp32 [batch, num_qo_heads]."""

import torch

from . import checks
from .page import paged_cache_heads_dim


@torch.library.register_fake("flashinfer::batch_decode_with_paged_kv_cache")
def batch_decode_with_paged_kv_cache(q, paged_k_cache, paged_v_cache, kv_indptr, kv_indices, kv_last_page_len,
                                     kv_layout, rope_llama, window_left, logits_soft_cap, sm_scale, k_scale, v_scale,
                                     rope_scale, rope_theta, backend="auto"):
    op = "batch_decode_with_paged_kv_cache"
    checks.check(backend in ("auto", "tensor_core", "cuda_core"), op,
                 f'backend must be "auto", "tensor_core" or "cuda_core", got "{backend}"')
    hkv, cache_dim = paged_cache_heads_dim(paged_k_cache, paged_v_cache, kv_layout, op)
    checks.attention_q(q, hkv, cache_dim, "paged_kv_cache", op)
    if rope_llama:
        checks.rope_freq(rope_scale, rope_theta, op)
    checks.check(paged_k_cache.dtype in (q.dtype, torch.float8_e4m3fn, torch.float8_e5m2), op,
                 f"paged_kv_cache must have the dtype of q ({checks.dtype_name(q.dtype)}) or be float8_e4m3fn / "
                 f"float8_e5m2, got {checks.dtype_name(paged_k_cache.dtype)}")
    checks.same_device(paged_k_cache, "paged_kv_cache", q, "q", op)
    checks.check(kv_last_page_len.shape[0] == q.shape[0], op,
                 f"kv_last_page_len must have batch_size={q.shape[0]} entries (q's first dim), got "
                 f"{kv_last_page_len.shape[0]}")
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)
