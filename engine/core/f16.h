// IEEE 754 binary16 storage type (HF checkpoints in float16, GGUF F16 tensors).
#pragma once
#include <cstdint>
#include <cstring>

namespace lethe {

struct f16 {
  uint16_t bits = 0;
};

inline float f16_to_float(f16 v) {
  const uint16_t h = v.bits;
  const uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while (!(m & 0x400));
      u = sign | uint32_t(127 - 15 - e) << 23 | (m & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 112) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; overflow goes to inf, tiny values to subnormals or zero.
inline f16 float_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) return f16{uint16_t(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0))};
  if (abs >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00)};  // rounds past 65504
  if (abs < 0x38800000u) {  // below 2^-14: subnormal half
    if (abs < 0x33000000u) return f16{sign};  // below half of the smallest subnormal
    const uint32_t m = (abs & 0x7fffff) | 0x800000;
    const int shift = 126 - int(abs >> 23);  // 14..24 bits dropped
    const uint32_t rounded = (m >> shift) + (((m >> (shift - 1)) & 1) & (((m & ((1u << (shift - 1)) - 1)) != 0) | ((m >> shift) & 1)));
    return f16{uint16_t(sign | rounded)};
  }
  const uint32_t e = (abs >> 23) - 112, m = abs & 0x7fffff;
  uint32_t h = (e << 10) | (m >> 13);
  const uint32_t rest = m & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // carries into the exponent correctly
  return f16{uint16_t(sign | h)};
}

}  // namespace lethe
