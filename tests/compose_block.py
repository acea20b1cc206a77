"""A small transformer block (norm -> qkv -> RoPE -> gated MLP) written against the public API, used by the
composition tests. Run as a script it loads an exported program or AOTInductor package in a fresh process."""

import sys

import torch

import flashinfer


class Block(torch.nn.Module):
    def __init__(self, hidden=64, hq=4, hk=2, head_dim=16, inter=96):
        super().__init__()
        self.hq, self.hk, self.d = hq, hk, head_dim
        self.norm_w = torch.nn.Parameter(torch.randn(hidden))
        self.qkv = torch.nn.Linear(hidden, (hq + 2 * hk) * head_dim, bias=False)
        self.up = torch.nn.Linear(hidden, 2 * inter, bias=False)
        self.down = torch.nn.Linear(inter, hidden, bias=False)

    def forward(self, x, residual, pos_ids):
        flashinfer.fused_add_rmsnorm(x, residual, self.norm_w)  # x, residual updated in place
        qkv = self.qkv(x)
        t = x.shape[0]
        q = qkv[:, : self.hq * self.d].view(t, self.hq, self.d)  # strided views of the packed projection
        k = qkv[:, self.hq * self.d : (self.hq + self.hk) * self.d].view(t, self.hk, self.d)
        flashinfer.apply_rope_pos_ids_inplace(q, k, pos_ids)
        h = flashinfer.silu_and_mul(self.up(x))
        y = flashinfer.rmsnorm(self.down(h), self.norm_w)
        return y + q.sum((1, 2))[:, None] + k.sum((1, 2))[:, None]


def make_inputs(t, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, 64, generator=g).to(device), torch.randn(t, 64, generator=g).to(device),
            torch.randint(0, 4096, (t,), generator=g, dtype=torch.int32).to(device))


def main(kind, path, inputs_path, outputs_path):
    """Fresh process: load the saved program, run it on the saved inputs, save (output, *mutated inputs)."""
    args = torch.load(inputs_path)
    if kind == "export":
        fn = torch.export.load(path).module()
    else:
        fn = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        out = fn(*args)
    torch.save((out, args[0], args[1]), outputs_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
