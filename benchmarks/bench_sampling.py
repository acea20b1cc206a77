"""Sampling: ours vs upstream FlashInfer vs torch (softmax and torch.multinomial, under torch.compile where it
applies). Rows of a Llama-3 vocabulary (128256) of fp32 probabilities from softmax(randn * 3); GB/s counts the
rows read once (and written once for softmax and the renormalising / masking ops). Seeds and offsets are device
tensors for both libraries, so a draw makes no host round trip inside the timed graphs. chain_speculative_sampling
checks chains of 4 random draft tokens (nearly all rejected at the first: one draw over the residual)."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashinfer  # ours, or upstream's in the peer process  # noqa: E402
from common import main  # noqa: E402

VOCAB = 128256
BATCHES = [1, 16, 64, 256]


def make(batch):
    logits = torch.randn(batch, VOCAB, device="cuda") * 3
    return dict(logits=logits, probs=torch.softmax(logits, -1), seed=torch.tensor([7], device="cuda"),
                offset=torch.tensor([0], device="cuda"))


SPEC = 4  # draft tokens a request


def make_spec(batch):
    """A chain of SPEC draft tokens a request: draft and target rows as make()'s, the draft tokens random."""
    draft = torch.softmax(torch.randn(batch, SPEC, VOCAB, device="cuda") * 3, -1)
    target = torch.softmax(torch.randn(batch, SPEC + 1, VOCAB, device="cuda") * 3, -1)
    ids = torch.randint(0, VOCAB, (batch, SPEC), dtype=torch.int32, device="cuda")
    return dict(draft=draft, ids=ids, target=target, seed=torch.tensor([7], device="cuda"),
                offset=torch.tensor([0], device="cuda"))


def spec_bytes(batch):
    """The two rows (target and draft) a request's draw reads."""
    return 2 * batch * VOCAB * 4


def _torch_top_k_top_p(probs):
    """top-k 50 then top-p 0.9 by sorting, then multinomial: what a model without a sampling library does."""
    vals, idx = probs.topk(50, -1)
    vals = vals / vals.sum(-1, keepdim=True)
    keep = vals.cumsum(-1) - vals < 0.9
    vals = torch.where(keep, vals, 0)
    return idx.gather(-1, torch.multinomial(vals, 1))


_softmax_c = torch.compile(lambda x: torch.softmax(x, -1), dynamic=False)
_mask_c = torch.compile(lambda x: torch.where(x >= x.topk(50, -1).values[:, -1:], x, float("-inf")), dynamic=False)


def rows_bytes(batch):
    return batch * VOCAB * 4


def rows_rw_bytes(batch):
    return 2 * batch * VOCAB * 4


def _both(fn):
    return {"ours": fn, "upstream": fn}


CASES = {
    "softmax": (BATCHES, make, {**_both(lambda s: flashinfer.softmax(s["logits"])),
                                "torch.compile": lambda s: _softmax_c(s["logits"])}, rows_rw_bytes),
    "sampling_from_probs": (BATCHES, make, {
        **_both(lambda s: flashinfer.sampling_from_probs(s["probs"], seed=s["seed"], offset=s["offset"])),
        "torch.multinomial": lambda s: torch.multinomial(s["probs"], 1)}, rows_bytes),
    "top_p_sampling_from_probs 0.9": (BATCHES, make, _both(
        lambda s: flashinfer.top_p_sampling_from_probs(s["probs"], 0.9, seed=s["seed"], offset=s["offset"])),
        rows_bytes),
    "top_k_sampling_from_probs 50": (BATCHES, make, _both(
        lambda s: flashinfer.top_k_sampling_from_probs(s["probs"], 50, seed=s["seed"], offset=s["offset"])),
        rows_bytes),
    "top_k_top_p_sampling_from_probs 50, 0.9": (BATCHES, make, {
        **_both(lambda s: flashinfer.top_k_top_p_sampling_from_probs(s["probs"], 50, 0.9, seed=s["seed"],
                                                                     offset=s["offset"])),
        "torch sort + multinomial": lambda s: _torch_top_k_top_p(s["probs"])}, rows_bytes),
    "top_k_renorm_probs 50": (BATCHES, make, _both(lambda s: flashinfer.top_k_renorm_probs(s["probs"], 50)),
                              rows_rw_bytes),
    "top_p_renorm_probs 0.9": (BATCHES, make, _both(lambda s: flashinfer.top_p_renorm_probs(s["probs"], 0.9)),
                               rows_rw_bytes),
    "top_k_mask_logits 50": (BATCHES, make, {**_both(lambda s: flashinfer.top_k_mask_logits(s["logits"], 50)),
                                             "torch.compile": lambda s: _mask_c(s["logits"])}, rows_rw_bytes),
    f"chain_speculative_sampling, {SPEC} draft tokens": (BATCHES, make_spec, _both(
        lambda s: flashinfer.sampling.chain_speculative_sampling(s["draft"], s["ids"], s["target"], seed=s["seed"],
                                                                 offset=s["offset"])), spec_bytes),
}

if __name__ == "__main__":
    main(os.path.abspath(__file__), CASES, ["ours", "torch.compile", "torch.multinomial", "torch sort + multinomial"])
