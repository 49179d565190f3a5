// Counter-based RNG (Philox-4x32-10, Salmon et al. 2011, the generator cuRAND and
// torch use on GPU). Element i of a stream depends only on (seed, stream, i), so results
// are identical for any thread count or partitioning of the work.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace lethe {

class Philox {
 public:
  Philox(uint64_t seed, uint64_t stream) : key_{uint32_t(seed), uint32_t(seed >> 32)}, stream_(stream) {}

  // Four independent 32-bit words for counter `index`.
  std::array<uint32_t, 4> block(uint64_t index) const {
    std::array<uint32_t, 4> c{uint32_t(index), uint32_t(index >> 32), uint32_t(stream_), uint32_t(stream_ >> 32)};
    std::array<uint32_t, 2> k = key_;
    for (int r = 0; r < 10; ++r) {
      uint64_t p0 = uint64_t(0xD2511F53u) * c[0];
      uint64_t p1 = uint64_t(0xCD9E8D57u) * c[2];
      c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1], uint32_t(p0)};
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    return c;
  }

  // Uniform in (0, 1): never 0, so log() in Box-Muller is safe.
  static double to_unit(uint32_t hi, uint32_t lo) {
    uint64_t x = (uint64_t(hi) << 21) ^ (lo >> 11);  // 53 random bits
    return (double(x & ((uint64_t(1) << 53) - 1)) + 0.5) / double(uint64_t(1) << 53);
  }

  double uniform(uint64_t index) const {
    auto b = block(index);
    return to_unit(b[0], b[1]);
  }

  // Standard normal for element `index` (Box-Muller on one Philox block).
  double normal(uint64_t index) const {
    auto b = block(index);
    double u1 = to_unit(b[0], b[1]), u2 = to_unit(b[2], b[3]);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  // Uniform integer in [0, n) for element `index`; the 64-bit multiply keeps bias < n / 2^64.
  uint64_t below(uint64_t index, uint64_t n) const {
    auto b = block(index);
    uint64_t x = (uint64_t(b[0]) << 32) | b[1];
    return uint64_t((static_cast<unsigned __int128>(x) * n) >> 64);
  }

 private:
  std::array<uint32_t, 2> key_;
  uint64_t stream_;
};

}  // namespace lethe
