"""Fakes of the sampling family: shapes, dtypes and devices only."""

import torch

from . import checks


def _rows(t, name, probs_only, op):
    if probs_only:
        checks.check(t.dtype == torch.float32, op, f"{name} must be float32, got {checks.dtype_name(t.dtype)}")
    else:
        checks.float_dtype(t, name, op)
    checks.check(t.dim() == 2, op, f"{name} must be 2-D [batch_size, vocab_size], got shape {list(t.shape)}")
    checks.check(1 <= t.shape[1] < (1 << 24), op,
                 f"{name} must have 1 <= vocab_size < 16777216, got shape {list(t.shape)}")
    checks.check(t.shape[1] == 1 or t.stride(1) == 1, op,
                 f"{name} must have a contiguous last dim, got strides {list(t.stride())}")


def _per_row(t, name, dtype, batch, ref, op):
    if t is None:
        return
    checks.check(t.device == ref.device, op, f"{name} must be on {ref.device}, got {t.device}")
    checks.check(t.dtype == dtype, op, f"{name} must be {checks.dtype_name(dtype)}, got {checks.dtype_name(t.dtype)}")
    checks.check(t.dim() == 1 and t.shape[0] == batch, op,
                 f"{name} must have shape [{batch}] (one value per row), got {list(t.shape)}")


def _seed(t, name, batch, ref, op):
    checks.check(t.device == ref.device, op, f"{name} must be on {ref.device}, got {t.device}")
    checks.check(t.dtype == torch.int64, op, f"{name} must be int64, got {checks.dtype_name(t.dtype)}")
    checks.check(t.dim() == 1 and (t.shape[0] == 1 or t.shape[0] == batch), op,
                 f"{name} must have shape [1] or [{batch}], got {list(t.shape)}")


@torch.library.register_fake("flashinfer::softmax")
def softmax(logits, temperature, temperature_val):
    op = "softmax"
    _rows(logits, "logits", False, op)
    _per_row(temperature, "temperature", torch.float32, logits.shape[0], logits, op)
    return logits.new_empty(logits.shape, dtype=torch.float32)


@torch.library.register_fake("flashinfer::sampling_from_probs")
def sampling_from_probs(probs, indices, top_k, top_k_val, top_p, top_p_val, min_p, min_p_val, seed, offset):
    op = "sampling_from_probs"
    _rows(probs, "probs", True, op)
    if indices is not None:
        checks.check(indices.device == probs.device, op, f"indices must be on {probs.device}, got {indices.device}")
        checks.check(indices.dtype in (torch.int32, torch.int64), op,
                     f"indices must be int32 or int64, got {checks.dtype_name(indices.dtype)}")
        checks.check(indices.dim() == 1, op, f"indices must be 1-D [batch_size], got shape {list(indices.shape)}")
    batch = indices.shape[0] if indices is not None else probs.shape[0]
    _per_row(top_k, "top_k", torch.int32, batch, probs, op)
    _per_row(top_p, "top_p", torch.float32, batch, probs, op)
    _per_row(min_p, "min_p", torch.float32, batch, probs, op)
    _seed(seed, "seed", batch, probs, op)
    _seed(offset, "offset", batch, probs, op)
    return probs.new_empty((batch,), dtype=torch.int32), probs.new_empty((batch,), dtype=torch.bool)


def _renorm(t, name, top_k, top_p, probs_only, op):
    _rows(t, name, probs_only, op)
    _per_row(top_k, "top_k", torch.int32, t.shape[0], t, op)
    _per_row(top_p, "top_p", torch.float32, t.shape[0], t, op)
    return t.new_empty(t.shape)


@torch.library.register_fake("flashinfer::top_k_renorm_probs")
def top_k_renorm_probs(probs, top_k, top_k_val):
    return _renorm(probs, "probs", top_k, None, True, "top_k_renorm_probs")


@torch.library.register_fake("flashinfer::top_p_renorm_probs")
def top_p_renorm_probs(probs, top_p, top_p_val):
    return _renorm(probs, "probs", None, top_p, True, "top_p_renorm_probs")


@torch.library.register_fake("flashinfer::top_k_mask_logits")
def top_k_mask_logits(logits, top_k, top_k_val):
    return _renorm(logits, "logits", top_k, None, False, "top_k_mask_logits")


@torch.library.register_fake("flashinfer::chain_speculative_sampling")
def chain_speculative_sampling(draft_probs, draft_token_ids, target_probs, seed, offset):
    op = "chain_speculative_sampling"
    checks.check(draft_probs.dtype == torch.float32, op,
                 f"draft_probs must be float32, got {checks.dtype_name(draft_probs.dtype)}")
    checks.check(target_probs.dtype == torch.float32, op,
                 f"target_probs must be float32, got {checks.dtype_name(target_probs.dtype)}")
    checks.check(draft_token_ids.dtype == torch.int32, op,
                 f"draft_token_ids must be int32, got {checks.dtype_name(draft_token_ids.dtype)}")
    checks.check(draft_probs.dim() == 3, op, "draft_probs must be 3-D [batch_size, num_speculate_tokens, vocab_size], "
                 f"got shape {list(draft_probs.shape)}")
    batch, n, vocab = draft_probs.shape
    checks.check(1 <= vocab < (1 << 24), op,
                 f"draft_probs must have 1 <= vocab_size < 16777216, got shape {list(draft_probs.shape)}")
    checks.check(list(target_probs.shape) == [batch, n + 1, vocab], op,
                 f"target_probs must have shape [{batch}, {n + 1}, {vocab}] (one more row a request than "
                 f"draft_probs), got {list(target_probs.shape)}")
    checks.check(list(draft_token_ids.shape) == [batch, n], op,
                 f"draft_token_ids must have shape [{batch}, {n}], got {list(draft_token_ids.shape)}")
    checks.check(target_probs.device == draft_probs.device, op,
                 f"target_probs must be on {draft_probs.device}, got {target_probs.device}")
    checks.check(draft_token_ids.device == draft_probs.device, op,
                 f"draft_token_ids must be on {draft_probs.device}, got {draft_token_ids.device}")
    _seed(seed, "seed", batch, draft_probs, op)
    _seed(offset, "offset", batch, draft_probs, op)
    return (draft_token_ids.new_empty((batch, n + 1)), draft_token_ids.new_empty((batch,)),
            draft_token_ids.new_empty((batch,)))
