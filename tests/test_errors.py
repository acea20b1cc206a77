"""Bad input gets an error that names the argument and what was expected: on the real kernels (CPU, CUDA)
and on the fakes (what torch.compile / torch.export see)."""

import pytest
import torch

import flashinfer

bf16 = torch.bfloat16


def _x(device, *shape, dtype=bf16):
    return torch.randn(*shape, dtype=dtype, device=device)


def _append(d, positions=None, cache=None, kv_layout="NHD"):
    """A valid append of 2 tokens into a 4-page cache, with one argument replaced."""
    i32 = dict(dtype=torch.int32, device=d)
    flashinfer.append_paged_kv_cache(
        _x(d, 2, 2, 64), _x(d, 2, 2, 64), torch.zeros(2, **i32),
        torch.zeros(2, **i32) if positions is None else positions,
        _x(d, 4, 2, 16, 2, 64) if cache is None else cache, torch.zeros(4, **i32), torch.tensor([0, 4], **i32),
        torch.ones(1, **i32), kv_layout=kv_layout)


CASES = {
    "rmsnorm int input": (lambda d: flashinfer.rmsnorm(torch.ones(2, 8, dtype=torch.int32, device=d), _x(d, 8)),
                          r"rmsnorm: input must be float16, bfloat16 or float32, got Int"),
    "rmsnorm weight size": (lambda d: flashinfer.rmsnorm(_x(d, 2, 8), _x(d, 7)),
                            r"rmsnorm: weight must have shape \[8\] \(the last dim of input\), got \[7\]"),
    "rmsnorm weight dtype": (lambda d: flashinfer.rmsnorm(_x(d, 2, 8), _x(d, 8, dtype=torch.float16)),
                             r"rmsnorm: weight must have the dtype of input \(BFloat16\) or float32, got Half"),
    "rmsnorm out shape": (lambda d: flashinfer.rmsnorm(_x(d, 2, 8), _x(d, 8), out=_x(d, 3, 8)),
                          r"rmsnorm: out must have shape \[2, 8\], got \[3, 8\]"),
    "rmsnorm out dtype": (lambda d: flashinfer.rmsnorm(_x(d, 2, 8), _x(d, 8), out=_x(d, 2, 8, dtype=torch.float32)),
                          r"rmsnorm: out must have the dtype of input \(BFloat16\), got Float"),
    "fused residual shape": (lambda d: flashinfer.fused_add_rmsnorm(_x(d, 2, 8), _x(d, 2, 9), _x(d, 8)),
                             r"fused_add_rmsnorm: residual must have the shape of input \(\[2, 8\]\), got \[2, 9\]"),
    "fused residual dtype": (lambda d: flashinfer.fused_add_rmsnorm(_x(d, 2, 8), _x(d, 2, 8, dtype=torch.float16),
                                                                    _x(d, 8)),
                             r"fused_add_rmsnorm: residual must have the dtype of input \(BFloat16\), got Half"),
    "layernorm beta size": (lambda d: flashinfer.layernorm(_x(d, 2, 8), _x(d, 8), _x(d, 4)),
                            r"layernorm: beta must have shape \[8\]"),
    "act odd width": (lambda d: flashinfer.silu_and_mul(_x(d, 2, 7)),
                      r"silu_and_mul: input must be \[\.\.\., 2 \* d\] \(gate then up halves\), got shape \[2, 7\]"),
    "act out shape": (lambda d: flashinfer.gelu_and_mul(_x(d, 2, 8), out=_x(d, 2, 8)),
                      r"gelu_and_mul: out must have shape \[2, 4\], got \[2, 8\]"),
    "rope q rank": (lambda d: flashinfer.apply_rope_pos_ids(_x(d, 4, 64), _x(d, 4, 1, 64),
                                                            torch.zeros(4, dtype=torch.int32, device=d)),
                    r"apply_rope_pos_ids: q must be 3-D, got shape \[4, 64\]"),
    "rope rotary_dim": (lambda d: flashinfer.apply_rope_pos_ids(_x(d, 4, 2, 64), _x(d, 4, 1, 64),
                                                                torch.zeros(4, dtype=torch.int32, device=d), 63),
                        r"apply_rope_pos_ids: rotary_dim must be even and in \(0, head_dim=64\], got 63"),
    "rope k dtype": (lambda d: flashinfer.apply_rope_pos_ids(_x(d, 4, 2, 64), _x(d, 4, 1, 64, dtype=torch.float16),
                                                             torch.zeros(4, dtype=torch.int32, device=d)),
                     r"apply_rope_pos_ids: k must have the dtype of q \(BFloat16\), got Half"),
    "rope pos_ids dtype": (lambda d: flashinfer.apply_rope_pos_ids(_x(d, 4, 2, 64), _x(d, 4, 1, 64),
                                                                   torch.zeros(4, device=d)),
                           r"apply_rope_pos_ids: pos_ids must be int32 or int64, got Float"),
    "rope pos_ids length": (lambda d: flashinfer.apply_rope_pos_ids(_x(d, 4, 2, 64), _x(d, 4, 1, 64),
                                                                    torch.zeros(5, dtype=torch.int32, device=d)),
                            r"apply_rope_pos_ids: pos_ids must have shape \[nnz=4\], got \[5\]"),
    "rope int64 indptr": (lambda d: flashinfer.apply_rope(_x(d, 4, 2, 64), _x(d, 4, 1, 64),
                                                          torch.tensor([0, 4], device=d),
                                                          torch.tensor([0], dtype=torch.int32, device=d)),
                          r"apply_rope: indptr must be int32, got Long"),
    "rope indptr length": (lambda d: flashinfer.apply_rope(_x(d, 4, 2, 64), _x(d, 4, 1, 64),
                                                           torch.tensor([0, 4], dtype=torch.int32, device=d),
                                                           torch.tensor([0, 0], dtype=torch.int32, device=d)),
                           r"apply_rope: indptr must have batch_size \+ 1 = 3 entries \(offsets has 2\), got 2"),
    "llama31 factors": (lambda d: flashinfer.apply_llama31_rope_pos_ids(
                            _x(d, 4, 2, 64), _x(d, 4, 1, 64), torch.zeros(4, dtype=torch.int32, device=d),
                            low_freq_factor=4, high_freq_factor=4),
                        r"apply_rope_pos_ids: Llama 3.1 RoPE needs 0 < low_freq_factor < high_freq_factor"),
    "cache dtype": (lambda d: flashinfer.apply_rope_with_cos_sin_cache(
                        torch.zeros(4, dtype=torch.int64, device=d), _x(d, 4, 128), _x(d, 4, 64), 64,
                        _x(d, 16, 64)),
                    r"apply_rope_with_cos_sin_cache: cos_sin_cache must be float32, got BFloat16"),
    "cache head_size": (lambda d: flashinfer.apply_rope_with_cos_sin_cache(
                            torch.zeros(4, dtype=torch.int64, device=d), _x(d, 4, 100), _x(d, 4, 64), 64,
                            torch.randn(16, 64, device=d)),
                        r"query must be \[nnz, num_heads \* head_size\] or \[nnz, num_heads, head_size\] with "
                        r"head_size=64, got shape \[4, 100\]"),
    "append int64 positions": (lambda d: _append(d, positions=torch.zeros(2, dtype=torch.int64, device=d)),
                               r"append_paged_kv_cache: positions must be int32, got Long"),
    "append cache heads": (lambda d: _append(d, cache=_x(d, 4, 2, 16, 4, 64)),
                           r"append_paged_kv_cache: paged_kv_cache must hold num_kv_heads=2 and head_dim=64"),
    "append cache dtype": (lambda d: _append(d, cache=_x(d, 4, 2, 16, 2, 64, dtype=torch.float16)),
                           r"append_paged_kv_cache: paged_kv_cache must have the dtype of append_key \(BFloat16\)"),
    "append layout": (lambda d: _append(d, kv_layout="NDH"),
                      r'append_paged_kv_cache: kv_layout must be "NHD" or "HND", got "NDH"'),
    "seq_lens int64 indptr": (lambda d: flashinfer.get_seq_lens(torch.tensor([0, 2], device=d),
                                                                torch.ones(1, dtype=torch.int32, device=d), 16),
                              r"get_seq_lens: kv_indptr must be int32, got Long"),
    "seq_lens indptr length": (lambda d: flashinfer.get_seq_lens(torch.tensor([0, 2], dtype=torch.int32, device=d),
                                                                 torch.ones(2, dtype=torch.int32, device=d), 16),
                               r"get_seq_lens: kv_indptr must have batch_size \+ 1 = 3 entries"),
    "sampling probs dtype": (lambda d: flashinfer.sampling_from_probs(_x(d, 2, 8), seed=1, offset=0),
                             r"sampling_from_probs: probs must be float32, got BFloat16"),
    "sampling probs rank": (lambda d: flashinfer.sampling_from_probs(_x(d, 8, dtype=torch.float32), seed=1, offset=0),
                            r"sampling_from_probs: probs must be 2-D \[batch_size, vocab_size\], got shape \[8\]"),
    "sampling top_k length": (lambda d: flashinfer.top_k_sampling_from_probs(
        _x(d, 2, 8, dtype=torch.float32), torch.ones(3, dtype=torch.int32, device=d), seed=1, offset=0),
        r"sampling_from_probs: top_k must have shape \[2\] \(one value per row\), got \[3\]"),
    "sampling seed dtype": (lambda d: flashinfer.sampling_from_probs(
        _x(d, 2, 8, dtype=torch.float32), seed=torch.ones(1, dtype=torch.int32, device=d),
        offset=torch.ones(1, dtype=torch.int64, device=d)), r"sampling_from_probs: seed must be int64, got Int"),
    "softmax temperature length": (lambda d: flashinfer.softmax(_x(d, 2, 8), torch.ones(3, device=d)),
                                   r"softmax: temperature must have shape \[2\] \(one value per row\)"),
    "mask logits int": (lambda d: flashinfer.top_k_mask_logits(torch.ones(2, 8, dtype=torch.int32, device=d), 2),
                        r"top_k_mask_logits: logits must be float16, bfloat16 or float32, got Int"),
    "renorm strided last dim": (lambda d: flashinfer.top_k_renorm_probs(_x(d, 8, 2, dtype=torch.float32).t(), 2),
                                r"top_k_renorm_probs: probs must have a contiguous last dim"),
    "speculative target rows": (lambda d: flashinfer.chain_speculative_sampling(
        _x(d, 2, 3, 8, dtype=torch.float32), torch.zeros(2, 3, dtype=torch.int32, device=d),
        _x(d, 2, 3, 8, dtype=torch.float32), seed=1, offset=0),
        r"chain_speculative_sampling: target_probs must have shape \[2, 4, 8\] \(one more row a request than "
        r"draft_probs\), got \[2, 3, 8\]"),
    "speculative draft dtype": (lambda d: flashinfer.chain_speculative_sampling(
        _x(d, 2, 3, 8), torch.zeros(2, 3, dtype=torch.int32, device=d), _x(d, 2, 4, 8, dtype=torch.float32),
        seed=1, offset=0), r"chain_speculative_sampling: draft_probs must be float32, got BFloat16"),
    "speculative token ids shape": (lambda d: torch.ops.flashinfer.chain_speculative_sampling(
        _x(d, 2, 3, 8, dtype=torch.float32), torch.zeros(2, 2, dtype=torch.int32, device=d),
        _x(d, 2, 4, 8, dtype=torch.float32), torch.ones(1, dtype=torch.int64, device=d),
        torch.ones(1, dtype=torch.int64, device=d)),
        r"chain_speculative_sampling: draft_token_ids must have shape \[2, 3\], got \[2, 2\]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_real_kernel(device, case):
    fn, msg = CASES[case]
    with pytest.raises(RuntimeError, match="flashinfer." + msg if not msg.startswith("query") else msg):
        fn(device)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fake(case):
    """The same checks at trace time: the fakes run on meta tensors."""
    fn, msg = CASES[case]
    with pytest.raises(RuntimeError, match=msg):
        fn("meta")


def test_bad_input_under_compile():
    @torch.compile(fullgraph=True, backend="eager")
    def f(x, w):
        return flashinfer.rmsnorm(x, w)

    with pytest.raises(Exception, match=r"weight must have shape \[8\]"):
        f(torch.randn(2, 8), torch.randn(7))


def test_mixed_devices_named():
    x, w = torch.randn(2, 8), torch.randn(8, device="meta")
    with pytest.raises(RuntimeError, match=r"rmsnorm: weight must be on the same device as input"):
        flashinfer.rmsnorm(x, w)


@pytest.mark.gpu
def test_mixed_devices_cuda():
    x, w = torch.randn(2, 8, device="cuda"), torch.randn(8)
    with pytest.raises(RuntimeError, match=r"rmsnorm: weight must be on the same device as input \(cuda:0\), got cpu"):
        flashinfer.rmsnorm(x, w)
    q, k = torch.randn(3, 2, 64, device="cuda"), torch.randn(3, 1, 64, device="cuda")
    with pytest.raises(RuntimeError, match=r"pos_ids must be on the same device as q \(cuda:0\), got cpu"):
        flashinfer.apply_rope_pos_ids(q, k, torch.zeros(3, dtype=torch.int32))


@pytest.mark.gpu
def test_in_place_needs_addressable_layout():
    x = torch.randn(4, 64, 2, device="cuda")[..., 0]  # last dim strided
    r = torch.randn(4, 64, device="cuda")
    with pytest.raises(RuntimeError, match=r"fused_add_rmsnorm: input must have a contiguous last dim"):
        flashinfer.fused_add_rmsnorm(x, r, torch.randn(64, device="cuda"))
