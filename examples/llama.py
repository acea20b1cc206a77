"""A Llama-style decoder written against flashinfer's public ops: RMSNorm, RoPE, GQA attention over a paged KV
cache, SwiGLU through silu_and_mul, the residual through fused_add_rmsnorm. Random weights from a seed.

The model is functional in its cache: `forward` takes the per-layer paged caches (5-D NHD tensors) and the page
tables as arguments and writes the new tokens' K/V into them in place, so the same code runs eagerly, under
torch.compile(fullgraph=True), captured in a CUDA graph, and through torch.export / AOTInductor with the caches
as program inputs.

    python examples/llama.py        # prefill a few prompts, decode greedily, print the tokens
"""

from dataclasses import dataclass
from typing import List, Sequence

import torch

import flashinfer


@dataclass
class LlamaConfig:
    vocab_size: int = 256
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 64
    intermediate: int = 256
    rope_theta: float = 1e4
    eps: float = 1e-6
    page_size: int = 16


class Llama(torch.nn.Module):
    def __init__(self, cfg: LlamaConfig, seed: int = 0, dtype=torch.bfloat16, device="cpu"):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        h, d = cfg.hidden, cfg.head_dim

        def w(*shape, scale=None):
            t = torch.randn(*shape, generator=g) * (scale if scale is not None else shape[0] ** -0.5)
            return torch.nn.Parameter(t.to(dtype).to(device), requires_grad=False)

        self.embed = w(cfg.vocab_size, h, scale=1.0)
        self.layers_ = torch.nn.ModuleList()
        for _ in range(cfg.layers):
            layer = torch.nn.Module()
            layer.attn_norm = w(h, scale=0.1)
            layer.qkv = w(h, (cfg.heads + 2 * cfg.kv_heads) * d)
            layer.o = w(cfg.heads * d, h)
            layer.mlp_norm = w(h, scale=0.1)
            layer.gate_up = w(h, 2 * cfg.intermediate)
            layer.down = w(cfg.intermediate, h)
            with torch.no_grad():
                layer.attn_norm += 1
                layer.mlp_norm += 1
            self.layers_.append(layer)
        self.norm = w(h, scale=0.0)
        with torch.no_grad():
            self.norm += 1
        self.lm_head = w(h, cfg.vocab_size)

    def forward(self, tokens, positions, qo_indptr, batch_indices, kv_indptr, kv_indices, kv_last_page_len,
                caches: Sequence[torch.Tensor], decode: bool):
        """tokens/positions/batch_indices [T]: the new tokens, their positions and requests; qo_indptr [B+1] their
        split; the page tables describe each request after these tokens are appended. Writes the tokens' K/V into
        `caches` (one [pages, 2, page_size, kv_heads, head_dim] tensor per layer). Returns logits [T, vocab]."""
        cfg = self.cfg
        hq, hk, d = cfg.heads, cfg.kv_heads, cfg.head_dim
        t = tokens.shape[0]
        x = self.embed[tokens]
        residual = x
        x = flashinfer.rmsnorm(x, self.layers_[0].attn_norm, cfg.eps)
        for i, layer in enumerate(self.layers_):
            if i > 0:
                flashinfer.fused_add_rmsnorm(x, residual, layer.attn_norm, cfg.eps)
            qkv = x @ layer.qkv
            q = qkv[:, : hq * d].view(t, hq, d)
            k = qkv[:, hq * d : (hq + hk) * d].view(t, hk, d)
            v = qkv[:, (hq + hk) * d :].view(t, hk, d)
            flashinfer.apply_rope_pos_ids_inplace(q, k, positions, rope_theta=cfg.rope_theta)
            flashinfer.append_paged_kv_cache(k, v, batch_indices, positions, caches[i], kv_indices, kv_indptr,
                                             kv_last_page_len)
            if decode:  # one token per request
                attn, _ = torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
                    q, caches[i], None, kv_indptr, kv_indices, kv_last_page_len, "NHD", False, -1, 0.0, d ** -0.5,
                    1.0, 1.0, 1.0, 1e4)
            else:
                attn, _ = torch.ops.flashinfer.batch_prefill_with_paged_kv_cache(
                    q, qo_indptr, caches[i], None, kv_indptr, kv_indices, kv_last_page_len, None, None, "NHD", True,
                    -1, 0.0, d ** -0.5, 1.0, 1.0)
            x = attn.reshape(t, hq * d) @ layer.o
            flashinfer.fused_add_rmsnorm(x, residual, layer.mlp_norm, cfg.eps)
            x = flashinfer.silu_and_mul(x @ layer.gate_up) @ layer.down
        flashinfer.fused_add_rmsnorm(x, residual, self.norm, cfg.eps)
        return x @ self.lm_head


class DecodeStep(torch.nn.Module):
    """One decode step as a module with every varying piece an input: what torch.export and AOTInductor take."""

    def __init__(self, model: Llama):
        super().__init__()
        self.model = model

    def forward(self, tokens, positions, kv_indptr, kv_indices, kv_last_page_len, caches: List[torch.Tensor]):
        b = tokens.shape[0]
        rows = torch.arange(b, dtype=torch.int32, device=tokens.device)
        qo_indptr = torch.arange(b + 1, dtype=torch.int32, device=tokens.device)
        return self.model(tokens, positions, qo_indptr, rows, kv_indptr, kv_indices, kv_last_page_len, caches,
                          decode=True)


class Pages:
    """A minimal page allocator for the example: request b owns pages b * max_pages .. in order."""

    def __init__(self, cfg: LlamaConfig, batch: int, max_len: int, dtype, device):
        self.cfg, self.max_pages = cfg, -(-max_len // cfg.page_size)
        shape = (batch * self.max_pages, 2, cfg.page_size, cfg.kv_heads, cfg.head_dim)
        self.caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.layers)]
        self.device = device

    def tables(self, lens: Sequence[int]):
        """(kv_indptr, kv_indices, kv_last_page_len) for requests of these lengths."""
        ps = self.cfg.page_size
        counts = [-(-n // ps) for n in lens]
        indptr = [0]
        indices = []
        for b, c in enumerate(counts):
            indices += range(b * self.max_pages, b * self.max_pages + c)
            indptr.append(indptr[-1] + c)
        last = [n - (c - 1) * ps if c else 0 for n, c in zip(lens, counts)]
        i32 = dict(dtype=torch.int32, device=self.device)
        return torch.tensor(indptr, **i32), torch.tensor(indices, **i32), torch.tensor(last, **i32)


def prefill(model: Llama, pages: Pages, prompts: Sequence[Sequence[int]]):
    """Runs the prompts (of different lengths) in one ragged call; returns the logits of each prompt's last token."""
    dev = pages.device
    lens = [len(p) for p in prompts]
    tokens = torch.tensor([t for p in prompts for t in p], device=dev)
    positions = torch.tensor([i for n in lens for i in range(n)], dtype=torch.int32, device=dev)
    batch_indices = torch.tensor([b for b, n in enumerate(lens) for _ in range(n)], dtype=torch.int32, device=dev)
    qo_indptr = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(dev)
    logits = model(tokens, positions, qo_indptr, batch_indices, *pages.tables(lens), pages.caches, decode=False)
    return logits[qo_indptr[1:].long() - 1]


def generate(model: Llama, prompts, steps: int, device="cpu", step_fn=None, max_batch=8, max_len=128):
    """Greedy decoding: prefill, then `steps` decode steps (step_fn(tokens, positions, *tables, caches) runs the
    step; the eager DecodeStep by default). The page pool is sized for max_batch requests of max_len tokens, as a
    server's would be, whatever the batch. Returns the generated tokens [batch, steps] and each step's logits."""
    lens = [len(p) for p in prompts]
    if len(prompts) > max_batch or max(lens) + steps > max_len:
        raise ValueError(f"generate: {len(prompts)} prompts of up to {max(lens)} + {steps} tokens exceed the pool "
                         f"(max_batch={max_batch}, max_len={max_len})")
    pages = Pages(model.cfg, max_batch, max_len, model.embed.dtype, device)
    step_fn = DecodeStep(model) if step_fn is None else step_fn
    logits = prefill(model, pages, prompts)
    out, all_logits = [], []
    for _ in range(steps):
        tokens = logits.argmax(-1)
        out.append(tokens)
        positions = torch.tensor(lens, dtype=torch.int32, device=device)
        lens = [n + 1 for n in lens]
        logits = step_fn(tokens, positions, *pages.tables(lens), pages.caches)
        all_logits.append(logits)
    return torch.stack(out, 1), all_logits


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() and flashinfer.built_with_cuda() else "cpu"
    model = Llama(LlamaConfig(), device=device)
    tokens, _ = generate(model, [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11] * 20], steps=8, device=device)
    print(f"{device}: generated {tokens.tolist()}")
