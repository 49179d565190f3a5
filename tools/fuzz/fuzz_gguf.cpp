// Fuzz target: the GGUF reader: header, metadata, tensor infos (GgufFile::open), then what
// the importer asks of a file: the llama config, the tokenizer, every tensor dequantised.
#include <cstdint>
#include <exception>

#include "engine/io/gguf.h"
#include "tools/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lethe::fuzz::write_scratch("input.gguf", data, size);
  try {
    const lethe::GgufFile f = lethe::GgufFile::open(path);
    for (const std::string& key : f.keys()) {
      try {
        switch (f.type(key)) {
          case lethe::GgufType::string: (void)f.get_string(key); break;
          case lethe::GgufType::boolean: (void)f.get_bool(key); break;
          case lethe::GgufType::f32:
          case lethe::GgufType::f64: (void)f.get_float(key); break;
          case lethe::GgufType::array:
            if (f.array_type(key) == lethe::GgufType::string)
              (void)f.get_string_array(key);
            else if (f.array_type(key) == lethe::GgufType::f32 || f.array_type(key) == lethe::GgufType::f64)
              (void)f.get_float_array(key);
            else
              (void)f.get_int_array(key);
            break;
          default: (void)f.get_int(key);
        }
      } catch (const std::exception&) {
      }
    }
    for (const std::string& name : f.tensor_names()) {
      try {
        (void)f.tensor_f32(name);
      } catch (const std::exception&) {
      }
    }
    try {
      (void)f.tokenizer();
    } catch (const std::exception&) {
    }
    try {
      (void)f.llama_config();
      (void)f.llama_weights();
    } catch (const std::exception&) {
    }
  } catch (const std::exception&) {
    // Expected for bad input: the error names the file and the key or tensor.
  }
  return 0;
}
