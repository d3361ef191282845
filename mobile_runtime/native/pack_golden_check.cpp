// pack_golden_check: the C++ pack reader against conformance/golden/pack_golden.json. Every pack opens
// with the expected fingerprint, verifies in full, and returns exactly the listed float32 rows.
//
//   pack_golden_check conformance/golden      -> one "ok <file>" line per pack; exit 1 on any mismatch
//   pack_golden_check --verify PACK [FINGERPRINT]  -> open + full verify of one pack; exit 3 if refused
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pack_reader.h"

namespace {

// Number of values in `pack` whose rows differ from the JSON; prints the first few.
int check_pack(const std::string& dir, const nlohmann::json& spec, const nlohmann::json& entry, meki::PackMode mode) {
  meki::PackOptions o;
  o.mode = mode;
  o.expected_fingerprint = spec["fingerprint"].get<std::string>();
  auto pack = meki::MemoryPack::open(dir + "/" + entry["file"].get<std::string>(), o);
  const auto& h = pack->header();
  int bad = 0;
  if (entry["dtype"] != meki::dtype_name(h.dtype) || entry["layout"] != meki::layout_name(h.layout)) {
    std::fprintf(stderr, "%s: dtype/layout %s/%s, expected %s/%s\n", entry["file"].get<std::string>().c_str(),
                 meki::dtype_name(h.dtype), meki::layout_name(h.layout), entry["dtype"].get<std::string>().c_str(),
                 entry["layout"].get<std::string>().c_str());
    ++bad;
  }
  pack->verify();
  const std::vector<int64_t> tokens = spec["tokens"].get<std::vector<int64_t>>();
  std::vector<float> rows(tokens.size() * pack->row_floats());
  pack->lookup(tokens.data(), tokens.size(), rows.data());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const auto& want = entry["rows"][std::to_string(tokens[i])];
    for (size_t l = 0; l < h.num_layers; ++l)
      for (size_t k = 0; k < h.d_mem; ++k) {
        const float w = static_cast<float>(want[l][k].get<double>());
        const float g = rows[(i * h.num_layers + l) * h.d_mem + k];
        if (g != w && bad++ < 5)
          std::fprintf(stderr, "%s: token %lld layer %zu value %zu: got %.9g, expected %.9g\n",
                       entry["file"].get<std::string>().c_str(), static_cast<long long>(tokens[i]), l, k, g, w);
      }
  }
  return bad;
}

}  // namespace

int verify_one(const std::string& path, const std::string& fingerprint) {
  try {
    meki::PackOptions o;
    o.expected_fingerprint = fingerprint;
    auto pack = meki::MemoryPack::open(path, o);
    pack->verify();
    const auto& h = pack->header();
    std::printf("ok %s: V=%u L=%u m=%u %s %s, %u blocks\n", path.c_str(), h.vocab_size, h.num_layers, h.d_mem,
                meki::dtype_name(h.dtype), meki::layout_name(h.layout), h.num_blocks);
    return 0;
  } catch (const meki::PackError& e) {
    std::fprintf(stderr, "error: memory pack (%s): %s\n", meki::pack_errc_name(e.code()), e.what());
    return 3;
  }
}

int main(int argc, char** argv) {
  if (argc > 2 && std::string(argv[1]) == "--verify") return verify_one(argv[2], argc > 3 ? argv[3] : "");
  const std::string dir = argc > 1 ? argv[1] : "conformance/golden";
  std::ifstream in(dir + "/pack_golden.json");
  if (!in) {
    std::fprintf(stderr, "error: cannot read %s/pack_golden.json\n", dir.c_str());
    return 2;
  }
  const nlohmann::json spec = nlohmann::json::parse(in);
  int failures = 0;
  for (const auto& entry : spec["packs"]) {
    for (auto mode : {meki::PackMode::kPread, meki::PackMode::kMmap}) {
      const char* mname = mode == meki::PackMode::kPread ? "pread" : "mmap";
      try {
        const int bad = check_pack(dir, spec, entry, mode);
        failures += bad != 0;
        std::printf("%s %s (%s)\n", bad ? "FAIL" : "ok", entry["file"].get<std::string>().c_str(), mname);
      } catch (const meki::PackError& e) {
        ++failures;
        std::printf("FAIL %s (%s): %s: %s\n", entry["file"].get<std::string>().c_str(), mname,
                    meki::pack_errc_name(e.code()), e.what());
      }
    }
  }
  return failures ? 1 : 0;
}
