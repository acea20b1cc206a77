"""Fakes of the norm family: shapes, dtypes and devices only."""

import torch

from . import checks


def _input(input, op):
    checks.float_dtype(input, "input", op)
    checks.check(input.dim() >= 1, op, "input must have at least 1 dim ([..., hidden]), got a scalar")


@torch.library.register_fake("flashinfer::rmsnorm")
def rmsnorm(input, weight, eps, gemma):
    _input(input, "rmsnorm")
    checks.param_vector(weight, "weight", input, "rmsnorm")
    return input.new_empty(input.shape)


@torch.library.register_fake("flashinfer::rmsnorm_out")
def rmsnorm_out(out, input, weight, eps, gemma):
    _input(input, "rmsnorm")
    checks.param_vector(weight, "weight", input, "rmsnorm")
    checks.out_tensor(out, input, input.shape, "rmsnorm")


@torch.library.register_fake("flashinfer::fused_add_rmsnorm")
def fused_add_rmsnorm(input, residual, weight, eps, gemma):
    op = "fused_add_rmsnorm"
    _input(input, op)
    checks.same_device(residual, "residual", input, "input", op)
    checks.same_dtype(residual, "residual", input, "input", op)
    checks.check(residual.shape == input.shape, op,
                 f"residual must have the shape of input ({list(input.shape)}), got {list(residual.shape)}")
    checks.param_vector(weight, "weight", input, op)


@torch.library.register_fake("flashinfer::layernorm")
def layernorm(input, gamma, beta, eps):
    _input(input, "layernorm")
    checks.param_vector(gamma, "gamma", input, "layernorm")
    checks.param_vector(beta, "beta", input, "layernorm")
    checks.same_dtype(beta, "beta", gamma, "gamma", "layernorm")
    return input.new_empty(input.shape)
