"""Trace-time argument checks for the fakes, with the messages of csrc/checks.h.

Under torch.compile / torch.export only the fake runs, so bad shapes, dtypes and devices must be rejected here
too, with the same wording as the CUDA and CPU implementations.
"""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# c10::ScalarType names, as the C++ messages print dtypes.
_SCALAR_NAMES = {torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double",
                 torch.int32: "Int", torch.int64: "Long", torch.int16: "Short", torch.int8: "Char",
                 torch.uint8: "Byte", torch.bool: "Bool"}


def dtype_name(dtype: torch.dtype) -> str:
    return _SCALAR_NAMES.get(dtype, str(dtype))


def check(cond, op: str, msg: str) -> None:
    torch._check(cond, lambda: f"flashinfer.{op}: {msg}")


def float_dtype(t: torch.Tensor, name: str, op: str) -> None:
    check(t.dtype in FLOAT_DTYPES, op, f"{name} must be float16, bfloat16 or float32, got {dtype_name(t.dtype)}")


def same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str, op: str) -> None:
    check(t.device == ref.device, op, f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def same_dtype(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str, op: str) -> None:
    check(t.dtype == ref.dtype, op, f"{name} must have the dtype of {ref_name} ({dtype_name(ref.dtype)}), got {dtype_name(t.dtype)}")


def param_vector(p: torch.Tensor, name: str, input: torch.Tensor, op: str) -> None:
    same_device(p, name, input, "input", op)
    check(p.dim() == 1 and p.shape[0] == input.shape[-1], op,
          f"{name} must have shape [{input.shape[-1]}] (the last dim of input), got {list(p.shape)}")
    check(p.dtype in (input.dtype, torch.float32), op,
          f"{name} must have the dtype of input ({dtype_name(input.dtype)}) or float32, got {dtype_name(p.dtype)}")


def out_tensor(out: torch.Tensor, ref: torch.Tensor, sizes, op: str) -> None:
    same_device(out, "out", ref, "input", op)
    same_dtype(out, "out", ref, "input", op)
    check(list(out.shape) == list(sizes), op, f"out must have shape {list(sizes)}, got {list(out.shape)}")


def int_vector(t: torch.Tensor, name: str, ref: torch.Tensor, op: str, dtypes=(torch.int32,)) -> None:
    same_device(t, name, ref, "q", op)
    names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
    check(t.dtype in dtypes, op, f"{name} must be {names}, got {dtype_name(t.dtype)}")
    check(t.dim() == 1, op, f"{name} must be 1-D, got shape {list(t.shape)}")


def attention_q(q: torch.Tensor, hkv: int, kv_dim: int, kv_name: str, op: str) -> None:
    """q [tokens, Hq, D] (fp16/bf16) against K/V with hkv heads of kv_dim: head_dim 64/128/256 and Hq % Hkv == 0."""
    check(q.dtype in (torch.float16, torch.bfloat16), op, f"q must be float16 or bfloat16, got {dtype_name(q.dtype)}")
    check(q.dim() == 3, op, f"q must be 3-D, got shape {list(q.shape)}")
    d = q.shape[2]
    check(d in (64, 128, 256), op, f"unsupported head_dim {d}: supported 64, 128, 256")
    check(kv_dim == d, op, f"{kv_name} must have head_dim {d} (that of q), got {kv_dim}")
    check(hkv > 0 and q.shape[1] % hkv == 0, op,
          f"num_qo_heads ({q.shape[1]}) must be a multiple of num_kv_heads ({hkv})")


def rope_freq(rope_scale: float, rope_theta: float, op: str) -> None:
    check(rope_scale > 0, op, f"rope_scale must be positive, got {rope_scale}")
    check(rope_theta > 0, op, f"rope_theta must be positive, got {rope_theta}")
