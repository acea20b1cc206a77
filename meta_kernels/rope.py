"""Fakes of the RoPE family: outputs have the shapes of q and k (query and key)."""

import torch

from . import checks


def _qk(q, k, rotary_dim, op):
    checks.float_dtype(q, "q", op)
    checks.check(q.dim() == 3, op, f"q must be 3-D, got shape {list(q.shape)}")
    checks.check(k.dim() == 3, op, f"k must be 3-D, got shape {list(k.shape)}")
    checks.same_device(k, "k", q, "q", op)
    checks.same_dtype(k, "k", q, "q", op)
    checks.check(k.shape[0] == q.shape[0], op, f"k must have as many tokens as q ({q.shape[0]}), got {k.shape[0]}")
    checks.check(k.shape[2] == q.shape[2], op, f"k must have the head_dim of q ({q.shape[2]}), got {k.shape[2]}")
    checks.check(0 < rotary_dim <= q.shape[2] and rotary_dim % 2 == 0, op,
                 f"rotary_dim must be even and in (0, head_dim={q.shape[2]}], got {rotary_dim}")


def _freq(rope_scale, rope_theta, llama31, low, high, old_ctx, op):
    checks.rope_freq(rope_scale, rope_theta, op)
    if llama31:
        checks.check(high > low > 0, op, "Llama 3.1 RoPE needs 0 < low_freq_factor < high_freq_factor, got "
                     f"low_freq_factor={low}, high_freq_factor={high}")
        checks.check(old_ctx > 0, op, f"old_context_len must be positive, got {old_ctx}")


def _ragged(q, k, indptr, offsets, rotary_dim, freq, op):
    _qk(q, k, rotary_dim, op)
    checks.int_vector(indptr, "indptr", q, op)
    checks.int_vector(offsets, "offsets", q, op)
    checks.check(indptr.shape[0] == offsets.shape[0] + 1, op,
                 f"indptr must have batch_size + 1 = {offsets.shape[0] + 1} entries (offsets has "
                 f"{offsets.shape[0]}), got {indptr.shape[0]}")
    _freq(*freq, op)


def _positions(pos, name, q, op):
    checks.int_vector(pos, name, q, op, dtypes=(torch.int32, torch.int64))
    checks.check(pos.shape[0] == q.shape[0], op, f"{name} must have shape [nnz={q.shape[0]}], got {list(pos.shape)}")


@torch.library.register_fake("flashinfer::apply_rope")
def apply_rope(q, k, indptr, offsets, rotary_dim, interleave, *freq):
    _ragged(q, k, indptr, offsets, rotary_dim, freq, "apply_rope")
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.register_fake("flashinfer::apply_rope_inplace")
def apply_rope_inplace(q, k, indptr, offsets, rotary_dim, interleave, *freq):
    _ragged(q, k, indptr, offsets, rotary_dim, freq, "apply_rope_inplace")


@torch.library.register_fake("flashinfer::apply_rope_pos_ids")
def apply_rope_pos_ids(q, k, pos_ids, rotary_dim, interleave, *freq):
    _qk(q, k, rotary_dim, "apply_rope_pos_ids")
    _positions(pos_ids, "pos_ids", q, "apply_rope_pos_ids")
    _freq(*freq, "apply_rope_pos_ids")
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.register_fake("flashinfer::apply_rope_pos_ids_inplace")
def apply_rope_pos_ids_inplace(q, k, pos_ids, rotary_dim, interleave, *freq):
    _qk(q, k, rotary_dim, "apply_rope_pos_ids_inplace")
    _positions(pos_ids, "pos_ids", q, "apply_rope_pos_ids_inplace")
    _freq(*freq, "apply_rope_pos_ids_inplace")


def _heads(t, name, head_size, op):
    checks.check(head_size > 0, op, f"head_size must be positive, got {head_size}")
    checks.check((t.dim() == 2 and t.shape[1] % head_size == 0) or (t.dim() == 3 and t.shape[2] == head_size), op,
                 f"{name} must be [nnz, num_heads * head_size] or [nnz, num_heads, head_size] with "
                 f"head_size={head_size}, got shape {list(t.shape)}")
    return t.view(t.shape[0], -1, head_size) if t.dim() == 2 else t


def _cache_args(positions, query, key, head_size, cache, op):
    q, k = _heads(query, "query", head_size, op), _heads(key, "key", head_size, op)
    _qk(q, k, head_size, op)
    _positions(positions, "positions", q, op)
    checks.same_device(cache, "cos_sin_cache", q, "query", op)
    checks.check(cache.dtype == torch.float32, op, f"cos_sin_cache must be float32, got {checks.dtype_name(cache.dtype)}")
    checks.check(cache.dim() == 2 and cache.shape[1] % 2 == 0 and 0 < cache.shape[1] <= head_size, op,
                 "cos_sin_cache must be [max_seq_len, rotary_dim] with rotary_dim even and <= "
                 f"head_size={head_size}, got shape {list(cache.shape)}")


@torch.library.register_fake("flashinfer::apply_rope_with_cos_sin_cache")
def apply_rope_with_cos_sin_cache(positions, query, key, head_size, cos_sin_cache, is_neox):
    _cache_args(positions, query, key, head_size, cos_sin_cache, "apply_rope_with_cos_sin_cache")
    return query.new_empty(query.shape), key.new_empty(key.shape)


@torch.library.register_fake("flashinfer::apply_rope_with_cos_sin_cache_inplace")
def apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cos_sin_cache, is_neox):
    _cache_args(positions, query, key, head_size, cos_sin_cache, "apply_rope_with_cos_sin_cache_inplace")
