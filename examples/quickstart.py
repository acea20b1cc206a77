"""Quickstart: the norm, RoPE and gated-activation ops inside a compiled block, checked against plain PyTorch.

Runs on the GPU when there is one, on the CPU otherwise:  python examples/quickstart.py
"""

import torch

import flashinfer

device = "cuda" if torch.cuda.is_available() and flashinfer.built_with_cuda() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
tokens, hidden, heads, kv_heads, head_dim, inter = 8, 512, 8, 2, 64, 1024

torch.manual_seed(0)
w_norm = torch.randn(hidden, device=device, dtype=dtype)
w_qkv = torch.randn(hidden, (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype) / hidden**0.5
w_up = torch.randn(hidden, 2 * inter, device=device, dtype=dtype) / hidden**0.5


def block(x, residual, positions):
    flashinfer.fused_add_rmsnorm(x, residual, w_norm)  # residual += x; x = rmsnorm(residual)
    qkv = x @ w_qkv
    q = qkv[:, : heads * head_dim].view(-1, heads, head_dim)  # strided views, no copies
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(-1, kv_heads, head_dim)
    q, k = flashinfer.apply_rope_pos_ids(q, k, positions)
    return q, k, flashinfer.silu_and_mul(x @ w_up)


def plain(x, residual, positions):
    r = (x.float() + residual.float())
    h = (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-6) * w_norm.float()).to(dtype)
    qkv = h @ w_qkv
    q = qkv[:, : heads * head_dim].view(-1, heads, head_dim).float()
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(-1, kv_heads, head_dim).float()
    freq = 1e4 ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    ang = positions[:, None].double() * freq
    cos, sin = ang.cos().float()[:, None], ang.sin().float()[:, None]

    def rot(t):
        a, b = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).to(dtype)

    u = h @ w_up
    return rot(q), rot(k), (torch.nn.functional.silu(u[:, :inter].float()) * u[:, inter:].float()).to(dtype)


compiled = torch.compile(block, fullgraph=True, dynamic=True)
for t in (tokens, tokens + 5):
    x = torch.randn(t, hidden, device=device, dtype=dtype)
    residual = torch.randn(t, hidden, device=device, dtype=dtype)
    positions = torch.arange(100, 100 + t, device=device, dtype=torch.int32)
    expect = plain(x, residual, positions)
    got = compiled(x.clone(), residual.clone(), positions)
    for name, a, b in zip(("q", "k", "mlp"), got, expect):
        err = (a.float() - b.float()).abs().max().item()
        print(f"{device} tokens={t:2d} {name:3s} shape={tuple(a.shape)} max|compiled - plain|={err:.2e}")
print(f"torch.ops.flashinfer ops ran compiled with fullgraph=True on {device}")
