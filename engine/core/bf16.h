// bfloat16 storage type: the upper 16 bits of an IEEE float32.
#pragma once
#include <cstdint>
#include <cstring>

namespace lethe {

struct bf16 {
  uint16_t bits = 0;
};

// Round to nearest even, as CUDA's __float2bfloat16 and torch do; NaN stays a quiet NaN.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return bf16{uint16_t((u >> 16) | 0x40)};
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t((u + rounding) >> 16)};
}

inline float bf16_to_float(bf16 b) {
  uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The float nearest f among bf16 values: what a value becomes when the GPU stores it as
// bf16 and reads it back. Products of two such values are exact in float (8 + 8 <= 24
// significant bits), so the GPU's bf16 x bf16 -> fp32 products are reproduced exactly.
inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

// Whether f is a bf16 value (its low 16 bits are zero); NaN counts as one.
inline bool is_bf16_value(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0xffffu) == 0 || f != f;
}

}  // namespace lethe
