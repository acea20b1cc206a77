"""flashinfer: FlashInfer's LLM-serving kernels as real PyTorch operators.

Every kernel is ``torch.ops.flashinfer.<name>`` with a schema, CPU and CUDA implementations and a fake, so
model code that calls them compiles with ``torch.compile(fullgraph=True)``, captures in CUDA graphs and
exports with ``torch.export``. The Python functions follow FlashInfer 0.6's names and semantics.
"""

import sys

import torch

from . import _C  # noqa: F401  registers the schemas and the CPU/CUDA kernels
from . import meta_kernels  # noqa: F401  registers the fakes
from . import activation, cascade, core, decode, norm, page, prefill, rope, sampling
from .activation import gelu_and_mul, gelu_tanh_and_mul, silu_and_mul
from .cascade import (
    BatchDecodeWithSharedPrefixPagedKVCacheWrapper,
    BatchPrefillWithSharedPrefixPagedKVCacheWrapper,
    MultiLevelCascadeAttentionWrapper,
    merge_state,
    merge_state_in_place,
    merge_states,
)
from .core import BatchDecodeWithPagedKVCache, BatchPrefillWithRaggedKVCache, PagedKVCache
from .decode import (
    BatchDecodeWithPagedKVCacheWrapper,
    CUDAGraphBatchDecodeWithPagedKVCacheWrapper,
    single_decode_with_kv_cache,
)
from .norm import fused_add_rmsnorm, gemma_fused_add_rmsnorm, gemma_rmsnorm, layernorm, rmsnorm
from .page import append_paged_kv_cache, get_batch_indices_positions, get_seq_lens
from .prefill import (
    BatchPrefillWithPagedKVCacheWrapper,
    BatchPrefillWithRaggedKVCacheWrapper,
    packbits,
    segment_packbits,
    single_prefill_with_kv_cache,
    single_prefill_with_kv_cache_return_lse,
)
from .rope import (
    apply_llama31_rope,
    apply_llama31_rope_inplace,
    apply_llama31_rope_pos_ids,
    apply_llama31_rope_pos_ids_inplace,
    apply_rope,
    apply_rope_inplace,
    apply_rope_pos_ids,
    apply_rope_pos_ids_inplace,
    apply_rope_with_cos_sin_cache,
    apply_rope_with_cos_sin_cache_inplace,
)
from .sampling import (
    chain_speculative_sampling,
    min_p_sampling_from_probs,
    sampling_from_logits,
    sampling_from_probs,
    softmax,
    top_k_mask_logits,
    top_k_renorm_probs,
    top_k_sampling_from_probs,
    top_k_top_p_sampling_from_logits,
    top_k_top_p_sampling_from_probs,
    top_p_renorm_probs,
    top_p_sampling_from_probs,
)

__version__ = "0.1.0"


def built_with_cuda() -> bool:
    """Whether this build of flashinfer._C holds the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("flashinfer::rmsnorm", "CUDA")


def aot_inductor_configs(configs=None) -> dict:
    """Inductor options for ``torch._inductor.aoti_compile_and_package(ep, inductor_configs=...)``, merged into
    ``configs`` (a dict of Inductor options, left unchanged).

    The packaged model library must use the process's shared C++ runtime (torch's libstdc++.so.6). Inductor lets
    the compiler driver pick the runtime, and a GCC whose own library directory holds only ``libstdc++.a`` (a
    GCC installed under its own prefix, for one) links a private static copy into the library; its locale
    machinery then faults the moment the library runs in a torch process (``std::regex`` in the model
    constructor), whatever the model. Naming the runtime by soname (``-l:libstdc++.so.6``) before the driver's own
    ``-lstdc++`` leaves that nothing to pull from the archive. Elsewhere the soname is what the link would have
    used anyway. Only Linux has this runtime; other platforms get ``configs`` back as they are.
    """
    out = dict(configs or {})
    if sys.platform.startswith("linux"):
        libs = list(out.get("aot_inductor.custom_op_libs") or [])
        if ":libstdc++.so.6" not in libs:
            libs.insert(0, ":libstdc++.so.6")
        out["aot_inductor.custom_op_libs"] = libs
    return out
