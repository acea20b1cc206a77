// CPU RoPE shared with other CPU implementations (decode applies it on the fly).
#pragma once
#include <ATen/ATen.h>

namespace flashinfer {

// NeoX-style RoPE over the whole last dim of x [L, H, D] at positions [L], angles in double, result fp32.
at::Tensor rope_neox_float(const at::Tensor& x, const at::Tensor& positions, double rope_scale, double rope_theta);

}  // namespace flashinfer
