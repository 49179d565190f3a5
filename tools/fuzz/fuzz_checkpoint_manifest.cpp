// Fuzz target: the checkpoint manifest reader (Checkpoint::open) and what loading a model
// from it reads next: the model config and every tensor slice.
//
// The input is manifest.json. The harness writes the COMPLETE marker with the input's own
// hash, so inputs get past the marker check to the parsing behind it, and it keeps a real
// shard (shard_0.h5, written once at start-up) beside the manifest. The shard's SHA-256
// differs from run to run (HDF5 records times), so the literal SHARD_SHA256 in an input
// stands for it: seeds that use it reach the shard index and the slice reads.
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/io/checkpoint.h"
#include "engine/io/model_checkpoint.h"
#include "engine/io/sha256.h"
#include "tools/fuzz/fuzz_util.h"

namespace fs = std::filesystem;

namespace {

fs::path g_dir;
std::string g_shard_sha;

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const fs::path runs = lethe::fuzz::scratch_dir() / "runs";
  fs::create_directories(runs);
  {
    lethe::CheckpointWriter w(runs.string(), "step_00000001", 0, false);
    lethe::Tensor t = lethe::Tensor::zeros({4, 3}, lethe::DType::f32);
    w.add("weights", "model.embed_tokens.weight", t);
    w.add_slice("optim_m", "model.embed_tokens.weight", lethe::Tensor::zeros({2, 3}, lethe::DType::f32), {4, 3},
                {2, 0});
    w.manifest()["step"] = 1;
    w.commit();
  }
  g_dir = lethe::fuzz::scratch_dir() / "ckpt";
  fs::create_directories(g_dir);
  for (const auto& e : fs::directory_iterator(runs / "step_00000001"))
    if (e.path().extension() == ".h5") {
      fs::copy_file(e.path(), g_dir / e.path().filename(), fs::copy_options::overwrite_existing);
      g_shard_sha = lethe::to_hex(lethe::sha256_file(e.path().string()));
    }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  for (size_t at = text.find("SHARD_SHA256"); at != std::string::npos; at = text.find("SHARD_SHA256", at))
    text.replace(at, 12, g_shard_sha);
  write_text(g_dir / "manifest.json", text);
  write_text(g_dir / "COMPLETE", lethe::to_hex(lethe::sha256(text.data(), text.size())) + "\n");
  try {
    const lethe::Checkpoint c = lethe::Checkpoint::open(g_dir.string());
    for (const char* group : {"weights", "optim_m", "optim_v"})
      for (const std::string& name : c.names(group)) {
        try {
          (void)c.read(group, name, lethe::DType::f32);
        } catch (const std::exception&) {
        }
      }
    if (c.manifest().contains("model")) (void)lethe::llama_config_from_json(c.manifest()["model"], "manifest.json");
  } catch (const std::exception&) {
    // Expected for bad input: the error names the checkpoint and what is wrong with it.
  }
  return 0;
}
