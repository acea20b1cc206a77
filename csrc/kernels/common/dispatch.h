// Compile-time dispatch over run-time values, in the style of lambda switch macros: the body is
// instantiated once per case with the value bound to a constexpr name. An unsupported value returns
// cudaErrorInvalidValue from the launcher (adapters validate first, so users see their own message).
#pragma once

#define FI_DISPATCH_VEC(vec, VEC, ...)              \
  switch (vec) {                                    \
    case 8: { constexpr int VEC = 8; __VA_ARGS__ } break; \
    case 4: { constexpr int VEC = 4; __VA_ARGS__ } break; \
    case 2: { constexpr int VEC = 2; __VA_ARGS__ } break; \
    case 1: { constexpr int VEC = 1; __VA_ARGS__ } break; \
    default: return cudaErrorInvalidValue;          \
  }

#define FI_DISPATCH_BOOL(cond, NAME, ...)                     \
  if (cond) { constexpr bool NAME = true; __VA_ARGS__ }       \
  else { constexpr bool NAME = false; __VA_ARGS__ }
