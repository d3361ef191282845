// The bundle's manifest.json (contract/bundle_manifest.schema.json): the fields the native
// runner needs, read strictly; a missing or mistyped field is a BundleError naming its path.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace meki {

class BundleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct MethodRef {
  std::string entry;                    // the program's own method name
  std::vector<std::string> input_names;  // tokens, input_pos[, meki_rows]
};

struct BackboneRef {
  std::string target, file, quant;
  int64_t max_seq_len = 0, prefill_len = 0;
  MethodRef prefill, decode;
  bool takes_meki_rows() const;
};

struct PackRefN {
  std::string file, dtype, layout, fingerprint;
  int64_t vocab_size = 0, num_layers = 0, d_mem = 0;
};

struct FileRef {
  std::string path;
  int64_t bytes = 0;
};

struct Manifest {
  std::string name, fingerprint, memory;  // memory: both | static | dynamic | none
  bool has_tokenizer = false;
  std::vector<int64_t> eos_token_ids;
  bool has_pack = false;
  PackRefN pack;
  std::vector<BackboneRef> backbones;
  std::vector<FileRef> files;
  const BackboneRef& backbone(const std::string& target) const;  // throws BundleError
};

// Reads <bundle>/manifest.json; throws BundleError.
Manifest load_manifest(const std::string& bundle);
// Checks every listed file exists with its size, every referenced file is listed, and the pack's
// fingerprint is the model's (sha256 is left to the Python side: `meki verify`).
void check_bundle_files(const std::string& bundle, const Manifest& m);

}  // namespace meki
