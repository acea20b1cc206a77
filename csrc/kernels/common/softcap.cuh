// Logits soft cap (Gemma 2 and others): score -> cap * tanh(score / cap). Torch-free.
#pragma once

namespace flashinfer {

// Decode's form: tanh(x) = 1 + 2 cap_tanh_core(2 x log2 e), with cap_tanh_core(z) = -1 / (2^z + 1): one MUFU.EX2
// and one MUFU.RCP, no branch. It errs by ~2e-7 absolute over the whole range (an ulp of 1, as 1 + 2 r rounds),
// i.e. < 1e-5 of a capped score, and saturates exactly: 2^+big = inf gives r = -0, 2^-big = 0 gives r = -1. NaN
// stays NaN. Decode folds 2 log2(e) / cap into its query scale and the affine map into one fma a score: cap log2(e)
// (1 + 2 r), straight in the log2 domain.
__device__ __forceinline__ float cap_tanh_core(float z) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(z));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(e + 1.f));
  return -r;
}

// Prefill's form: tanh.approx, one MUFU.TANH a score and nothing else. Prefill under a cap is bound by instruction
// issue, and this took capped prefill 8-23% faster than cap_tanh_core's five instructions and two MUFU (H100, both
// mainloops, head_dim 64-256; benchmarks/RESULTS.md). Its relative error, up to 2^-10.99 (PTX ISA), moves the
// output a tenth of what the bf16 tests allow (0.001-0.003 against 0.012-0.024 at caps 3 to 50, a float64 reference
// perturbed by it); tanhf, exact to an ulp, costs ~20 instructions and a branch. Saturates at +-1; NaN stays NaN.
__device__ __forceinline__ float tanh_approx(float x) {
  float t;
  asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(x));
  return t;
}

}  // namespace flashinfer
