// SHA-256 through OpenSSL's libcrypto: document hashes in token datasets, shard
// checksums in checkpoint manifests.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace lethe {

using Sha256 = std::array<uint8_t, 32>;

Sha256 sha256(const void* data, size_t n);

// The same digest fed piece by piece: sha256(a + b) == (update(a), update(b), final()).
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void update(const void* data, size_t n);
  Sha256 final();  // once

 private:
  void* ctx_;  // EVP_MD_CTX
};
Sha256 sha256_file(const std::string& path);  // streams the file; errors name it
std::string to_hex(const Sha256& h);

}  // namespace lethe
