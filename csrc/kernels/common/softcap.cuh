// Logits soft cap (Gemma 2 and others): score -> cap * tanh(score / cap). Torch-free.
#pragma once

namespace flashinfer {

// tanh(x) = 1 + 2 cap_tanh_core(2 x log2 e), with cap_tanh_core(z) = -1 / (2^z + 1): one MUFU.EX2 and one
// MUFU.RCP, no branch. tanhf is precise to an ulp of the result but costs ~20 instructions and a branch per score,
// more than the rest of a prefill tile's score path; tanh.approx (one MUFU) errs by ~2^-11 of the result, up to
// 0.025 of a score under a cap of 50. This form errs by ~2e-7 absolute over the whole range (an ulp of 1, as
// 1 + 2 r rounds), i.e. < 1e-5 of a capped score, and saturates exactly: 2^+big = inf gives r = -0, 2^-big = 0
// gives r = -1. NaN stays NaN. Decode folds 2 log2(e) / cap into its query scale and the affine map into one fma
// a score: cap log2(e) (1 + 2 r), straight in the log2 domain.
__device__ __forceinline__ float cap_tanh_core(float z) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(z));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(e + 1.f));
  return -r;
}

// Prefill keeps this form: folding the constants there measured no clear gain (benchmarks/RESULTS.md).
__device__ __forceinline__ float cap_tanh(float x) { return fmaf(2.f, cap_tanh_core(x * 2.8853900817779268f), 1.f); }

}  // namespace flashinfer
