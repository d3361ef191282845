// conformance_check: the C++ readers against conformance/index.json (conformance/CHECKS.md).
//
//   conformance_check conformance            -> one "ok|FAIL <id> [mode] expected X got Y" line per
//                                               case and mode; closing line "cpp: N passed, N failed"
//   conformance_check --shrink-while-mapped PACK   -> opens PACK (a scratch copy: it is truncated) with
//                                               mmap, reads a token, truncates the file, reads another:
//                                               prints the check that refused it; exit 0 iff pack.file_size
//   conformance_check --sha256 STRING        -> the SHA-256 of STRING (tests check it against hashlib)
//
// Procedure per kind (the same in every language's runner):
//   pack:   open(expected fingerprint) -> lookup(tokens) -> verify() -> rows equal the golden JSON
//   bundle: load_manifest -> check_bundle_files(sha256 on) -> open the pack -> check_pack_header
//   xxh3:   every "length hex" line equals xxh3_64 of the LCG byte prefix
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "manifest.h"
#include "pack_reader.h"
#include "sha256.h"

namespace {

using nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string run_pack(const std::string& root, const json& c, meki::PackMode mode) {
  try {
    meki::PackOptions o;
    o.mode = mode;
    if (c.contains("fingerprint")) o.expected_fingerprint = c["fingerprint"].get<std::string>();
    auto pack = meki::MemoryPack::open(root + "/" + c["path"].get<std::string>(), o);
    const std::vector<int64_t> tokens = c.value("tokens", std::vector<int64_t>{0});
    std::vector<float> rows(tokens.size() * pack->row_floats());
    pack->lookup(tokens.data(), tokens.size(), rows.data());
    pack->verify();
    if (c.contains("rows")) {
      const json spec = json::parse(read_text(root + "/" + c["rows"].get<std::string>()));
      const std::string name = c["path"].get<std::string>().substr(c["path"].get<std::string>().rfind('/') + 1);
      for (const auto& p : spec["packs"]) {
        if (p["file"] != name) continue;
        for (size_t i = 0; i < tokens.size(); ++i) {
          const auto& want = p["rows"][std::to_string(tokens[i])];
          for (size_t k = 0; k < pack->row_floats(); ++k)
            if (rows[i * pack->row_floats() + k] != float(want[k / pack->header().d_mem][k % pack->header().d_mem].get<double>()))
              return "rows differ";
        }
      }
    }
    return "ok";
  } catch (const meki::PackError& e) {
    return e.check();
  }
}

std::string run_bundle(const std::string& root, const json& c) {
  const std::string bundle = root + "/" + c["path"].get<std::string>();
  try {
    const meki::Manifest m = meki::load_manifest(bundle);
    meki::check_bundle_files(bundle, m, /*check_hashes=*/true);
    if (m.has_pack) {
      meki::PackOptions o;
      o.expected_fingerprint = m.fingerprint;
      o.cache_bytes = 0;
      auto pack = meki::MemoryPack::open(bundle + "/" + m.pack.file, o);
      const auto& h = pack->header();
      meki::check_pack_header(m, meki::dtype_name(h.dtype), meki::layout_name(h.layout), h.vocab_size, h.num_layers, h.d_mem);
    }
    return "ok";
  } catch (const meki::BundleError& e) {
    return e.check();
  } catch (const meki::PackError& e) {
    return e.check();
  }
}

std::string run_xxh3(const std::string& root, const json& c) {
  std::istringstream in(read_text(root + "/" + c["path"].get<std::string>()));
  std::vector<std::pair<size_t, std::string>> vecs;
  size_t longest = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream f(line);
    size_t n;
    std::string hex;
    f >> n >> hex;
    vecs.emplace_back(n, hex);
    longest = std::max(longest, n);
  }
  std::vector<uint8_t> data(longest);
  uint64_t x = 0;
  for (auto& b : data) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    b = uint8_t(x >> 56);
  }
  for (const auto& v : vecs) {
    char got[17];
    std::snprintf(got, sizeof(got), "%016llx", static_cast<unsigned long long>(meki::xxh3_64(data.data(), v.first)));
    if (v.second != got) return "xxh3 differs at length " + std::to_string(v.first);
  }
  return "ok";
}

int run_all(const std::string& root) {
  const json index = json::parse(read_text(root + "/index.json"));
  int passed = 0, failed = 0;
  for (const auto& c : index["cases"]) {
    const std::string kind = c["kind"];
    if (c.contains("readers") && std::find(c["readers"].begin(), c["readers"].end(), "cpp") == c["readers"].end()) continue;
    const std::string want = c["expect"] == "ok" ? "ok" : c["check"].get<std::string>();
    std::vector<std::pair<std::string, std::string>> got;  // (mode, outcome)
    if (kind == "pack") {
      got.emplace_back("pread", run_pack(root, c, meki::PackMode::kPread));
      got.emplace_back("mmap", run_pack(root, c, meki::PackMode::kMmap));
    } else if (kind == "bundle") {
      got.emplace_back("", run_bundle(root, c));
    } else if (kind == "xxh3") {
      got.emplace_back("", run_xxh3(root, c));
    } else {
      continue;
    }
    for (const auto& g : got) {
      const bool ok = g.second == want;
      (ok ? passed : failed)++;
      std::printf("%s %s%s%s expected %s got %s\n", ok ? "ok" : "FAIL", c["id"].get<std::string>().c_str(),
                  g.first.empty() ? "" : " ", g.first.c_str(), want.c_str(), g.second.c_str());
    }
  }
  std::printf("cpp: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

// Class 2 of issue 12: the file shrinks under an open mmap reader.
int shrink_while_mapped(const std::string& path) {
  meki::PackOptions o;
  o.mode = meki::PackMode::kMmap;
  o.cache_bytes = 0;
  auto pack = meki::MemoryPack::open(path, o);
  const auto& h = pack->header();
  std::vector<float> rows(pack->row_floats());
  const int64_t first = 0, last = int64_t(h.vocab_size) - 1;
  pack->lookup(&first, 1, rows.data());
  if (truncate(path.c_str(), off_t(h.data_offset)) != 0) {
    std::perror("truncate");
    return 2;
  }
  for (int pass = 0; pass < 2; ++pass) {  // an unverified block, then the verified one again
    try {
      const int64_t tok = pass == 0 ? last : first;
      pack->lookup(&tok, 1, rows.data());
      std::printf("read token %lld of a truncated mapping without an error\n", static_cast<long long>(tok));
      return 1;
    } catch (const meki::PackError& e) {
      std::printf("%s: %s\n", e.check(), e.what());
      if (std::string(e.check()) != "pack.file_size") return 1;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string a1 = argc > 1 ? argv[1] : "conformance";
  if (a1 == "--shrink-while-mapped" && argc > 2) return shrink_while_mapped(argv[2]);
  if (a1 == "--sha256" && argc > 2) {
    std::printf("%s\n", meki::sha256_hex(argv[2]).c_str());
    return 0;
  }
  try {
    return run_all(a1);
  } catch (const std::exception& e) {  // no index.json there, or one that is not the corpus's
    std::fprintf(stderr, "conformance_check: %s/index.json: %s\nusage: conformance_check [CORPUS_DIR] | "
                 "--sha256 TEXT | --shrink-while-mapped PACK\n", a1.c_str(), e.what());
    return 2;
  }
}
