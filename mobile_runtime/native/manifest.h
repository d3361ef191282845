// The bundle's manifest.json (contract/bundle_manifest.schema.json): the fields the native
// runner needs, read strictly; a missing or mistyped field is a BundleError naming its path.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace meki {

// `check` is the conformance/CHECKS.md name of the rule that refused the bundle.
// A message that quotes manifest text keeps to one printable line: control characters (a newline, a
// terminal's ESC sequences) from a hostile manifest are written as \xNN.
inline std::string printable(const std::string& msg) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (const unsigned char c : msg) {
    if (c < 0x20 || c == 0x7f) out += std::string("\\x") + hex[c >> 4] + hex[c & 15];
    else out += char(c);
  }
  return out;
}

class BundleError : public std::runtime_error {
 public:
  explicit BundleError(const std::string& msg, const char* check = "manifest.schema")
      : std::runtime_error(printable(msg)), check_(check) {}
  const char* check() const { return check_; }

 private:
  const char* check_;
};

constexpr size_t kMaxManifestBytes = size_t(1) << 20;  // manifest.too_large
constexpr int kMaxJsonDepth = 64;                       // manifest.too_deep

// Deepest array/object nesting of JSON text, by a scan that never recurses (strings skipped).
int json_depth(const std::string& text);
// Why p is not a clean bundle-relative path, or "" (CHECKS.md manifest.path).
std::string path_problem(const std::string& p);

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
  std::string path, sha256;
  int64_t bytes = 0;
};

struct Manifest {
  std::string name, fingerprint, memory;  // memory: both | static | dynamic | none
  // config's widths and vocabulary where given as positive integers, else 0 (dim, ffn_dim: a hint, not checked)
  int64_t dim = 0, ffn_dim = 0, vocab_size = 0;
  bool has_tokenizer = false;
  std::vector<int64_t> eos_token_ids;
  std::string tokenizer_file;
  bool has_pack = false;
  PackRefN pack;
  std::vector<BackboneRef> backbones;
  std::vector<FileRef> files;
  const BackboneRef& backbone(const std::string& target) const;  // throws BundleError
};

// Reads <bundle>/manifest.json (size and depth caps first, then JSON, paths, schema); throws BundleError.
Manifest load_manifest(const std::string& bundle);
// Parses manifest text (the caps included); throws BundleError. `where` names it in messages.
Manifest parse_manifest(const std::string& text, const std::string& where);
// Checks every listed file is a regular file with no symlink on its path below the bundle, with its
// size (and sha256 when check_hashes), every referenced path is listed (a folder counts when files
// under it are: a Core ML .mlpackage), and the pack's fingerprint and memory mode agree.
void check_bundle_files(const std::string& bundle, const Manifest& m, bool check_hashes = false);
// The pack header must say what memory_pack says (bundle.pack_mismatch); every consumer calls it.
void check_pack_header(const Manifest& m, const std::string& dtype, const std::string& layout, int64_t vocab_size,
                       int64_t num_layers, int64_t d_mem);

}  // namespace meki
