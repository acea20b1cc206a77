"""Fakes of the cascade family (attention-state merges): shapes, dtypes and devices only."""

import torch

from . import checks


def _lse_of(s, s_name, v, v_name, op):
    checks.same_device(s, s_name, v, v_name, op)
    checks.check(s.dtype == torch.float32, op,
                 f"{s_name} must be float32 (the log2-sum-exp of {v_name}'s scores), got {checks.dtype_name(s.dtype)}")
    expected = list(v.shape[:-1])
    checks.check(list(s.shape) == expected, op,
                 f"{s_name} must have shape {expected} (that of {v_name} without head_dim), got {list(s.shape)}")


def _state(v, v_name, s, s_name, op):
    checks.float_dtype(v, v_name, op)
    checks.check(v.dim() == 3, op, f"{v_name} must be 3-D [seq_len, num_heads, head_dim], got shape {list(v.shape)}")
    checks.check(v.shape[2] > 0, op, f"{v_name} must have head_dim >= 1, got shape {list(v.shape)}")
    _lse_of(s, s_name, v, v_name, op)


def _state_like(v, v_name, s, s_name, ref, ref_name, op):
    _state(v, v_name, s, s_name, op)
    checks.same_device(v, v_name, ref, ref_name, op)
    checks.same_dtype(v, v_name, ref, ref_name, op)
    checks.check(v.shape == ref.shape, op,
                 f"{v_name} must have the shape of {ref_name} ({list(ref.shape)}), got {list(v.shape)}")


@torch.library.register_fake("flashinfer::merge_state")
def merge_state(v_a, s_a, v_b, s_b):
    op = "merge_state"
    _state(v_a, "v_a", s_a, "s_a", op)
    _state_like(v_b, "v_b", s_b, "s_b", v_a, "v_a", op)
    return v_a.new_empty(v_a.shape), s_a.new_empty(s_a.shape)


@torch.library.register_fake("flashinfer::merge_state_in_place")
def merge_state_in_place(v, s, v_other, s_other, mask=None):
    op = "merge_state_in_place"
    _state(v, "v", s, "s", op)
    _state_like(v_other, "v_other", s_other, "s_other", v, "v", op)
    if mask is not None:
        checks.same_device(mask, "mask", v, "v", op)
        checks.check(mask.dtype == torch.bool, op, f"mask must be bool, got {checks.dtype_name(mask.dtype)}")
        checks.check(mask.dim() == 1 and mask.shape[0] == v.shape[0], op,
                     f"mask must have shape [{v.shape[0]}] (one flag per row of v), got {list(mask.shape)}")


@torch.library.register_fake("flashinfer::merge_states")
def merge_states(v, s):
    op = "merge_states"
    checks.float_dtype(v, "v", op)
    checks.check(v.dim() == 4, op,
                 f"v must be 4-D [seq_len, num_states, num_heads, head_dim], got shape {list(v.shape)}")
    checks.check(v.shape[3] > 0, op, f"v must have head_dim >= 1, got shape {list(v.shape)}")
    _lse_of(s, "s", v, "v", op)
    return v.new_empty((v.shape[0], v.shape[2], v.shape[3])), s.new_empty((s.shape[0], s.shape[2]))
