"""Fakes of the gated activations: [..., 2d] -> [..., d]."""

import torch

from . import checks


def _out_shape(input, op):
    checks.float_dtype(input, "input", op)
    checks.check(input.dim() >= 1 and input.shape[-1] % 2 == 0, op,
                 f"input must be [..., 2 * d] (gate then up halves), got shape {list(input.shape)}")
    return (*input.shape[:-1], input.shape[-1] // 2)


def _register(name):
    @torch.library.register_fake(f"flashinfer::{name}")
    def functional(input):
        return input.new_empty(_out_shape(input, name))

    @torch.library.register_fake(f"flashinfer::{name}_out")
    def out_variant(out, input):
        checks.out_tensor(out, input, _out_shape(input, name), name)


for _name in ("silu_and_mul", "gelu_and_mul", "gelu_tanh_and_mul"):
    _register(_name)
