"""A Llama-style decoder written against flashinfer's public ops: RMSNorm, RoPE, GQA attention over a paged KV
cache, SwiGLU through silu_and_mul, the residual through fused_add_rmsnorm. Random weights from a seed.

The model is functional in its cache: `forward` takes the per-layer paged caches (5-D NHD tensors) and the page
tables as arguments and writes the new tokens' K/V into them in place, so the same code runs eagerly, under
torch.compile(fullgraph=True), captured in a CUDA graph, and through torch.export / AOTInductor with the caches
as program inputs.

    python examples/llama.py        # prefill a few prompts, decode (greedy, then sampled), print the tokens
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
            attn = self.attend(i, q, caches[i], qo_indptr, kv_indptr, kv_indices, kv_last_page_len, decode)
            x = attn.reshape(t, hq * d) @ layer.o
            flashinfer.fused_add_rmsnorm(x, residual, layer.mlp_norm, cfg.eps)
            x = flashinfer.silu_and_mul(x @ layer.gate_up) @ layer.down
        flashinfer.fused_add_rmsnorm(x, residual, self.norm, cfg.eps)
        return x @ self.lm_head

    def attend(self, layer_idx, q, cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, decode: bool):
        """Attention of the new tokens over their requests' cached K/V (causal). The ops are called directly:
        no wrapper state, so nothing here stops torch.compile, CUDA graphs or torch.export. A subclass may route
        this elsewhere (benchmarks/bench_model.py runs the same model on upstream FlashInfer's wrappers)."""
        d = self.cfg.head_dim
        if decode:  # one token per request
            out, _ = torch.ops.flashinfer.batch_decode_with_paged_kv_cache(
                q, cache, None, kv_indptr, kv_indices, kv_last_page_len, "NHD", False, -1, 0.0, d ** -0.5,
                1.0, 1.0, 1.0, 1e4)
        else:
            out, _ = torch.ops.flashinfer.batch_prefill_with_paged_kv_cache(
                q, qo_indptr, cache, None, kv_indptr, kv_indices, kv_last_page_len, None, None, "NHD", True, -1,
                0.0, d ** -0.5, 1.0, 1.0)
        return out


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
    """The page pool of the example: one [num_pages, 2, page_size, kv_heads, head_dim] cache per layer, pages handed
    out from a shuffled free list as requests grow (a server's pool after some churn), so a request's pages are
    scattered and a step that crosses a page boundary gets a new page between two steps."""

    def __init__(self, cfg: LlamaConfig, num_pages: int, dtype, device, seed: int = 0):
        self.cfg, self.num_pages, self.device = cfg, num_pages, device
        shape = (num_pages, 2, cfg.page_size, cfg.kv_heads, cfg.head_dim)
        self.caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.layers)]
        self.free = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed)).tolist()
        self.owned: List[List[int]] = []  # request -> its pages, in token order
        self.static = False

    def mark_static(self) -> "Pages":
        """Marks the tensors whose shapes are fixed for the pool's life (the caches, and the padded kv_indices that
        tables() returns from now on) static for torch.compile. Under dynamic=True Dynamo otherwise gives equal
        sizes one symbol when it first traces (duck sizing): a batch of 2 gets tied to the caches' K/V dim, a batch
        of 16 to a page size of 16, and the next batch size recompiles. Call it before the first compiled call;
        eager and CUDA-graph runs need nothing. Returns the pool."""
        import torch._dynamo  # torch.compile has loaded it already; an eager-only process never pays for it

        for c in self.caches:
            torch._dynamo.mark_static(c)
        self.static = True
        return self

    def tables(self, lens: Sequence[int]):
        """(kv_indptr, kv_indices, kv_last_page_len) for requests 0..len(lens)-1 at these lengths, allocating the
        pages they now need. kv_indices is padded to the pool's size: the page tables keep one shape for the
        life of the pool, as the fixed buffers of a CUDA graph need."""
        ps = self.cfg.page_size
        while len(self.owned) < len(lens):
            self.owned.append([])
        need = sum(max(0, -(-n // ps) - len(pages)) for pages, n in zip(self.owned, lens))
        if need > len(self.free):  # checked first: a failing call hands out nothing
            raise RuntimeError(f"Pages: out of pages: {need} more needed, {len(self.free)} free of {self.num_pages}")
        indptr, indices = [0], []
        for pages, n in zip(self.owned, lens):
            while len(pages) * ps < n:
                pages.append(self.free.pop())
            used = pages[: -(-n // ps)]
            indices += used
            indptr.append(len(indices))
        last = [n - (-(-n // ps) - 1) * ps if n else 0 for n in lens]
        indices += [0] * (self.num_pages - len(indices))
        i32 = dict(dtype=torch.int32, device=self.device)
        kv_indices = torch.tensor(indices, **i32)
        if self.static:
            torch._dynamo.mark_static(kv_indices)
        return torch.tensor(indptr, **i32), kv_indices, torch.tensor(last, **i32)


class GraphedDecode:
    """A decode step captured once in a CUDA graph for one batch size and page pool. Each call copies the step's
    inputs into the graph's buffers and replays; the logits it returns are a buffer the next call overwrites.
    `step` is any callable with DecodeStep's signature (eager or compiled). With own_inputs=False the example
    tensors themselves become the graph's inputs: a loop that updates them in place calls replay() and copies
    nothing (what a serving engine's persistent input buffers do)."""

    def __init__(self, step, example_args: Sequence[torch.Tensor], caches: List[torch.Tensor], own_inputs=True):
        self.inputs = [a.clone() if own_inputs else a for a in example_args]
        self.caches = caches
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (lazy init, autotuning); it writes the new
            for _ in range(2):         # tokens' K/V into slots that are not part of any request yet
                step(*self.inputs, caches)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = step(*self.inputs, caches)

    def __call__(self, *args):
        *args, caches = args
        if len(caches) != len(self.caches) or any(a is not b for a, b in zip(caches, self.caches)):
            raise ValueError("GraphedDecode: the caches must be the ones the graph was captured with")
        for buf, a in zip(self.inputs, args):
            if buf.shape != a.shape:
                raise ValueError(f"GraphedDecode: input of shape {tuple(a.shape)}, captured {tuple(buf.shape)}")
            if buf is not a:
                buf.copy_(a)
        return self.replay()

    def replay(self):
        self.graph.replay()
        return self.out


class Sampler(torch.nn.Module):
    """The next tokens from a step's logits, on the device: softmax at `temperature`, then a draw under top-k and
    top-p (flashinfer.sampling; 0 and 1 switch them off), or the argmax when temperature <= 0. Each call draws its
    Philox key on the device (torch.randint), so a compiled or graph-captured loop samples anew at every step with no
    host round trip; torch.manual_seed makes a run repeatable."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        super().__init__()
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature <= 0:
            return logits.argmax(-1)
        probs = flashinfer.softmax(logits.float(), temperature=self.temperature)
        return flashinfer.top_k_top_p_sampling_from_probs(probs, self.top_k, self.top_p).long()


def prefill(model: Llama, pages: Pages, prompts: Sequence[Sequence[int]], forward=None):
    """Runs the prompts (of different lengths) in one ragged call (through `forward`, the model by default, or a
    compiled model); returns the logits of each prompt's last token."""
    dev = pages.device
    lens = [len(p) for p in prompts]
    tokens = torch.tensor([t for p in prompts for t in p], device=dev)
    positions = torch.tensor([i for n in lens for i in range(n)], dtype=torch.int32, device=dev)
    batch_indices = torch.tensor([b for b, n in enumerate(lens) for _ in range(n)], dtype=torch.int32, device=dev)
    qo_indptr = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(dev)
    forward = model if forward is None else forward
    logits = forward(tokens, positions, qo_indptr, batch_indices, *pages.tables(lens), pages.caches, decode=False)
    return logits[qo_indptr[1:].long() - 1]


def generate(model: Llama, prompts, steps: int, device="cpu", step_fn=None, prefill_fn=None, graph=False,
             max_batch=8, max_len=128, static_pool=False, sampler=None):
    """Decoding, greedy or through `sampler` (logits -> next tokens, e.g. a Sampler): prefill (through prefill_fn,
    the model by default), then `steps` decode steps through
    step_fn(tokens, positions, kv_indptr, kv_indices, kv_last_page_len, caches) (the eager DecodeStep by default;
    with graph=True captured once in a CUDA graph and replayed). The page pool holds max_batch requests of max_len
    tokens, as a server's would, whatever the batch; static_pool marks it static (Pages.mark_static: for a step_fn
    or prefill_fn compiled with dynamic=True). Returns the generated tokens [batch, steps] and each step's logits."""
    lens = [len(p) for p in prompts]
    if len(prompts) > max_batch or max(lens) + steps > max_len:
        raise ValueError(f"generate: {len(prompts)} prompts of up to {max(lens)} + {steps} tokens exceed the pool "
                         f"(max_batch={max_batch}, max_len={max_len})")
    pages = Pages(model.cfg, max_batch * -(-max_len // model.cfg.page_size), model.embed.dtype, device)
    if static_pool:
        pages.mark_static()
    step_fn = DecodeStep(model) if step_fn is None else step_fn
    logits = prefill(model, pages, prompts, prefill_fn)
    out, all_logits = [], []
    for _ in range(steps):
        tokens = logits.argmax(-1) if sampler is None else sampler(logits)
        out.append(tokens)
        args = (tokens, torch.tensor(lens, dtype=torch.int32, device=device))
        lens = [n + 1 for n in lens]
        args += pages.tables(lens)  # allocates the pages of requests that cross a page boundary
        if graph and not isinstance(step_fn, GraphedDecode):
            step_fn = GraphedDecode(step_fn, args, pages.caches)
        logits = step_fn(*args, pages.caches).clone()  # graph outputs are overwritten by the next replay
        all_logits.append(logits)
    return torch.stack(out, 1), all_logits


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() and flashinfer.built_with_cuda() else "cpu"
    model = Llama(LlamaConfig(), device=device)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11] * 20]
    tokens, _ = generate(model, prompts, steps=8, device=device)
    print(f"{device}: greedy {tokens.tolist()}")
    tokens, _ = generate(model, prompts, steps=8, device=device, sampler=Sampler(0.8, top_k=50, top_p=0.9))
    print(f"{device}: sampled {tokens.tolist()}")
