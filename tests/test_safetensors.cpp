// safetensors reading and writing: round trip, and malformed files rejected with the
// file and tensor named.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/io/safetensors.h"
#include "tests/test_util.h"

namespace lethe {
namespace {
namespace fs = std::filesystem;

std::string tmp(const std::string& name) {
  return (fs::temp_directory_path() / ("lethe_st_" + std::to_string(::getpid()) + "_" + name)).string();
}

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);  // little-endian host
  out << header << data;
}

void expect_error(const std::string& path, const std::string& needle) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  fs::remove(path);
}

TEST(Safetensors, RoundTripAllDtypes) {
  const std::string p = tmp("rt.safetensors");
  Tensor a = test::randn({3, 4}, DType::f32, 1), b = test::randn({5}, DType::f64, 2);
  Tensor c = test::randn({2, 2}, DType::bf16, 3), d = Tensor::from<int32_t>({3}, {-1, 0, 7});
  write_safetensors(p, {{"a", a}, {"b", b}, {"c", c}, {"d", d}}, {{"note", "hello"}});
  const auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f.metadata().at("note"), "hello");
  EXPECT_EQ(f.names().size(), 4u);
  for (auto [name, t] : std::vector<std::pair<std::string, Tensor>>{{"a", a}, {"b", b}, {"c", c}, {"d", d}}) {
    const Tensor r = f.tensor(name);
    EXPECT_EQ(r.shape(), t.shape()) << name;
    EXPECT_EQ(r.dtype(), t.dtype()) << name;
    EXPECT_EQ(std::memcmp(r.raw(), t.raw(), t.nbytes()), 0) << name;
  }
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  EXPECT_THROW(f.tensor("missing"), Error);
  fs::remove(p);
}

TEST(Safetensors, F16ConvertsExactlyAndI64Narrows) {
  const std::string p = tmp("f16.safetensors");
  // F16: 1.0 = 0x3c00, -2.0 = 0xc000, smallest subnormal 2^-24 = 0x0001.
  const uint16_t h[3] = {0x3c00, 0xc000, 0x0001};
  const int64_t big[2] = {5, int64_t(1) << 40};
  std::string data(reinterpret_cast<const char*>(h), 6);
  data += std::string(2, '\0');
  data += std::string(reinterpret_cast<const char*>(big), 16);
  write_raw(p,
            R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"pad":{"dtype":"U8","shape":[2],"data_offsets":[6,8]},)"
            R"("i":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},"j":{"dtype":"I64","shape":[1],"data_offsets":[16,24]}})",
            data);
  const auto f = SafetensorsFile::open(p);
  const Tensor h16 = f.tensor("h");
  EXPECT_EQ(h16.dtype(), DType::f16);
  const Tensor t = h16.to(DType::f32);
  EXPECT_EQ(t.data<float>()[0], 1.0f);
  EXPECT_EQ(t.data<float>()[1], -2.0f);
  EXPECT_EQ(t.data<float>()[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(f.tensor("i").data<int32_t>()[0], 5);
  EXPECT_THROW(f.tensor("j"), Error);  // 2^40 does not fit int32
  fs::remove(p);
}

TEST(Safetensors, MalformedFilesAreRejected) {
  const std::string p = tmp("bad.safetensors");
  std::ofstream(p) << "abc";
  expect_error(p, "too small");
  write_raw(p, "{not json", "");
  expect_error(p, "not valid JSON");
  {
    std::ofstream out(p, std::ios::binary);
    const uint64_t n = 1ull << 40;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  expect_error(p, "exceeds the 100 MB limit");
  {
    std::ofstream out(p, std::ios::binary);
    const uint64_t n = 50;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  expect_error(p, "runs past the end");
  write_raw(p, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0'));
  expect_error(p, "outside the data section");
  write_raw(p, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", std::string(16, '\0'));
  expect_error(p, "16 bytes for shape [3]");
  write_raw(p, R"({"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}})", std::string(1, '\0'));
  expect_error(p, "unknown dtype 'Q9'");
  write_raw(p, R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0'));
  expect_error(p, "non-negative");
  write_raw(p, R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", std::string(4, '\0'));
  expect_error(p, "'w'");
  write_raw(p, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::string(8, '\0'));
  expect_error(p, "data_offsets");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, '\0'));
  expect_error(p, "overlap");
  write_raw(p, R"({"w":{"dtype":"F32","shape":[1]}})", "");
  expect_error(p, "needs dtype, shape and data_offsets");
  write_raw(p, R"({"__metadata__":{"k":3}})", "");
  expect_error(p, "not a string");
  expect_error(tmp("absent.safetensors"), "no such file");
}

}  // namespace
}  // namespace lethe
