#include "engine/io/sha256.h"

#include <openssl/evp.h>

#include <fstream>
#include <memory>
#include <vector>

#include "engine/core/error.h"

namespace lethe {
Sha256Stream::Sha256Stream() : ctx_(EVP_MD_CTX_new()) {
  LETHE_CHECK(ctx_ && EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) == 1,
              "sha256: OpenSSL initialisation failed");
}
Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }
void Sha256Stream::update(const void* p, size_t n) { EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), p, n); }
Sha256 Sha256Stream::final() {
  Sha256 h{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), h.data(), &len);
  return h;
}

namespace {
using Ctx = Sha256Stream;
}  // namespace

Sha256 sha256(const void* data, size_t n) {
  Ctx c;
  c.update(data, n);
  return c.final();
}

Sha256 sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LETHE_CHECK(in.good(), path, ": cannot open for hashing");
  Ctx c;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    c.update(buf.data(), size_t(in.gcount()));
  }
  LETHE_CHECK(in.eof(), path, ": read error while hashing");
  return c.final();
}

std::string to_hex(const Sha256& h) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (uint8_t b : h) {
    s += d[b >> 4];
    s += d[b & 15];
  }
  return s;
}

}  // namespace lethe
