"""Every op is complete in every layer (schema, CPU, CUDA when built, fake, opcheck samples), and the schema
list is pinned so any change shows up as a reviewed diff."""

import expecttest
import pytest
import torch

import flashinfer
from op_samples import SAMPLES


def flashinfer_ops():
    return sorted(s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("flashinfer::"))


OPS = flashinfer_ops()


@pytest.mark.parametrize("name", OPS)
def test_every_op_has_all_kernels(name):
    qualname = f"flashinfer::{name}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU"), f"{name}: no CPU kernel"
    if flashinfer.built_with_cuda():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"), f"{name}: no CUDA kernel"
    entry = torch._library.simple_registry.singleton.find(qualname)
    assert entry.fake_impl.kernel is not None, f"{name}: no fake (register it in meta_kernels/)"
    op = getattr(torch.ops.flashinfer, name).default
    assert torch.Tag.pt2_compliant_tag in op.tags


def test_every_op_has_samples():
    assert sorted(SAMPLES) == OPS


def test_cuda_kernels_present_when_built_with_cuda():
    # A CUDA build that silently dropped the kernels would pass every CPU test; the GPU box asserts this.
    if torch.cuda.is_available():
        assert flashinfer.built_with_cuda()


class TestSchemas(expecttest.TestCase):
    def test_schemas(self):
        schemas = sorted(str(s) for s in torch._C._jit_get_all_schemas() if s.name.startswith("flashinfer::"))
        self.assertExpectedInline("\n".join(schemas), """\
flashinfer::append_paged_kv_cache(Tensor append_key, Tensor append_value, Tensor batch_indices, Tensor positions, Tensor(a!) paged_k_cache, Tensor(b!)? paged_v_cache, Tensor kv_indices, Tensor kv_indptr, Tensor kv_last_page_len, str kv_layout) -> ()
flashinfer::apply_rope(Tensor q, Tensor k, Tensor indptr, Tensor offsets, int rotary_dim, bool interleave, float rope_scale, float rope_theta, bool llama31, float low_freq_factor, float high_freq_factor, float old_context_len) -> (Tensor, Tensor)
flashinfer::apply_rope_inplace(Tensor(a!) q, Tensor(b!) k, Tensor indptr, Tensor offsets, int rotary_dim, bool interleave, float rope_scale, float rope_theta, bool llama31, float low_freq_factor, float high_freq_factor, float old_context_len) -> ()
flashinfer::apply_rope_pos_ids(Tensor q, Tensor k, Tensor pos_ids, int rotary_dim, bool interleave, float rope_scale, float rope_theta, bool llama31, float low_freq_factor, float high_freq_factor, float old_context_len) -> (Tensor, Tensor)
flashinfer::apply_rope_pos_ids_inplace(Tensor(a!) q, Tensor(b!) k, Tensor pos_ids, int rotary_dim, bool interleave, float rope_scale, float rope_theta, bool llama31, float low_freq_factor, float high_freq_factor, float old_context_len) -> ()
flashinfer::apply_rope_with_cos_sin_cache(Tensor positions, Tensor query, Tensor key, int head_size, Tensor cos_sin_cache, bool is_neox) -> (Tensor, Tensor)
flashinfer::apply_rope_with_cos_sin_cache_inplace(Tensor positions, Tensor(a!) query, Tensor(b!) key, int head_size, Tensor cos_sin_cache, bool is_neox) -> ()
flashinfer::batch_decode_with_paged_kv_cache(Tensor q, Tensor paged_k_cache, Tensor? paged_v_cache, Tensor kv_indptr, Tensor kv_indices, Tensor kv_last_page_len, str kv_layout, bool rope_llama, int window_left, float logits_soft_cap, float sm_scale, float k_scale, float v_scale, float rope_scale, float rope_theta, str backend="auto") -> (Tensor, Tensor)
flashinfer::batch_prefill_with_paged_kv_cache(Tensor q, Tensor qo_indptr, Tensor paged_k_cache, Tensor? paged_v_cache, Tensor kv_indptr, Tensor kv_indices, Tensor kv_last_page_len, Tensor? packed_custom_mask, Tensor? mask_indptr, str kv_layout, bool causal, int window_left, float logits_soft_cap, float sm_scale, float k_scale, float v_scale, bool rope_llama=False, float rope_scale=1., float rope_theta=10000.) -> (Tensor, Tensor)
flashinfer::batch_prefill_with_ragged_kv_cache(Tensor q, Tensor qo_indptr, Tensor k, Tensor v, Tensor kv_indptr, Tensor? packed_custom_mask, Tensor? mask_indptr, str kv_layout, bool causal, int window_left, float logits_soft_cap, float sm_scale, float k_scale, float v_scale, bool rope_llama=False, float rope_scale=1., float rope_theta=10000.) -> (Tensor, Tensor)
flashinfer::chain_speculative_sampling(Tensor draft_probs, Tensor draft_token_ids, Tensor target_probs, Tensor seed, Tensor offset) -> (Tensor, Tensor, Tensor)
flashinfer::fused_add_rmsnorm(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps, bool gemma) -> ()
flashinfer::gelu_and_mul(Tensor input) -> Tensor
flashinfer::gelu_and_mul_out(Tensor(a!) out, Tensor input) -> ()
flashinfer::gelu_tanh_and_mul(Tensor input) -> Tensor
flashinfer::gelu_tanh_and_mul_out(Tensor(a!) out, Tensor input) -> ()
flashinfer::get_batch_indices_positions(Tensor append_indptr, Tensor seq_lens, int nnz) -> (Tensor, Tensor)
flashinfer::get_seq_lens(Tensor kv_indptr, Tensor kv_last_page_len, int page_size) -> Tensor
flashinfer::layernorm(Tensor input, Tensor gamma, Tensor beta, float eps) -> Tensor
flashinfer::merge_state(Tensor v_a, Tensor s_a, Tensor v_b, Tensor s_b) -> (Tensor, Tensor)
flashinfer::merge_state_in_place(Tensor(a!) v, Tensor(b!) s, Tensor v_other, Tensor s_other, Tensor? mask=None) -> ()
flashinfer::merge_states(Tensor v, Tensor s) -> (Tensor, Tensor)
flashinfer::rmsnorm(Tensor input, Tensor weight, float eps, bool gemma) -> Tensor
flashinfer::rmsnorm_out(Tensor(a!) out, Tensor input, Tensor weight, float eps, bool gemma) -> ()
flashinfer::sampling_from_probs(Tensor probs, Tensor? indices, Tensor? top_k, int top_k_val, Tensor? top_p, float top_p_val, Tensor? min_p, float min_p_val, Tensor seed, Tensor offset) -> (Tensor, Tensor)
flashinfer::silu_and_mul(Tensor input) -> Tensor
flashinfer::silu_and_mul_out(Tensor(a!) out, Tensor input) -> ()
flashinfer::softmax(Tensor logits, Tensor? temperature, float temperature_val) -> Tensor
flashinfer::top_k_mask_logits(Tensor logits, Tensor? top_k, int top_k_val) -> Tensor
flashinfer::top_k_renorm_probs(Tensor probs, Tensor? top_k, int top_k_val) -> Tensor
flashinfer::top_p_renorm_probs(Tensor probs, Tensor? top_p, float top_p_val) -> Tensor""")
