// Fuzz target for the pack header/file reader and the manifest parser (issue 12, class 1 and 8).
//
// libFuzzer (clang -fsanitize=fuzzer, -DMEKI_LIBFUZZER=ON): LLVMFuzzerTestOneInput is the target.
// Without clang (g++, the default here): a seeded mutation loop drives the same target for a
// bounded time, under AddressSanitizer + UBSan when built with -DMEKI_SANITIZE=ON:
//   fuzz_pack --seconds 60 --seed 1 SEED_FILE...      (packs and manifest.json files as seeds)
// Input byte 0 picks the target: 0 header (128 bytes), 1 whole pack file (pread and mmap), 2 manifest.
// A refusal (PackError / BundleError) is the expected outcome; anything else (another exception,
// a sanitizer report, a signal) is a crash and ends the run with a non-zero status.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "manifest.h"
#include "pack_reader.h"

namespace {

void fuzz_file(const uint8_t* data, size_t size) {
  const int fd = memfd_create("meki-fuzz", MFD_CLOEXEC);
  if (fd < 0 || write(fd, data, size) != ssize_t(size)) std::abort();
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  for (auto mode : {meki::PackMode::kPread, meki::PackMode::kMmap}) {
    try {
      meki::PackOptions o;
      o.mode = mode;
      o.cache_bytes = 1 << 16;
      auto pack = meki::MemoryPack::open(path, o);
      const auto& h = pack->header();
      std::vector<float> rows(2 * pack->row_floats());
      const int64_t ids[2] = {0, int64_t(h.vocab_size) - 1};
      pack->lookup(ids, 2, rows.data());
      pack->verify();
    } catch (const meki::PackError&) {
    }
  }
  close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t target = data[0] % 3;
  ++data, --size;
  if (target == 0) {
    uint8_t h[128] = {0};
    std::memcpy(h, data, std::min<size_t>(size, 128));
    try {
      meki::parse_header(h);
    } catch (const meki::PackError&) {
    }
  } else if (target == 1) {
    fuzz_file(data, size);
  } else {
    try {
      meki::parse_manifest(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    } catch (const meki::BundleError&) {
    }
  }
  return 0;
}

#ifndef MEKI_LIBFUZZER
namespace {

std::mt19937_64 rng;
uint64_t pick(uint64_t n) { return n ? rng() % n : 0; }

const uint64_t kInteresting[] = {0, 1, 2, 7, 8, 16, 127, 128, 4096, 16384, 1u << 24, 0x7fffffff, 0x80000000,
                                 0xffffffff, 0x100000000ull, 1ull << 62, 0x7fffffffffffffffull, ~0ull};

void rehash(std::vector<uint8_t>& f) {  // a valid header checksum, so the fuzz reaches checks 5-10
  if (f.size() < 128) return;
  const uint64_t s = meki::xxh3_64(f.data(), 120);
  std::memcpy(&f[120], &s, 8);
}

// A header whose fields follow the formulas with 64-bit WRAPPING arithmetic from random (often huge)
// shapes: what a writer with overflow bugs, or an attacker, would produce. Then header padding.
std::vector<uint8_t> wrapped_header() {
  std::vector<uint8_t> f(16384 + pick(3) * 4096, 0);
  auto put32 = [&](size_t o, uint32_t v) { std::memcpy(&f[o], &v, 4); };
  auto put64 = [&](size_t o, uint64_t v) { std::memcpy(&f[o], &v, 8); };
  const uint32_t V = uint32_t(pick(2) ? 1 + pick(1u << 31) : kInteresting[pick(18)]);
  const uint32_t L = uint32_t(pick(2) ? 1 + pick(1u << 31) : kInteresting[pick(18)]);
  const uint32_t m = uint32_t(8 * (1 + pick(pick(2) ? 1u << 28 : 64)));
  const uint8_t d = uint8_t(1 + pick(4)), lay = uint8_t(pick(2));
  const uint32_t g = d == 4 ? uint32_t(2 << pick(6)) : d == 3 ? m : 0;
  const uint32_t bs = uint32_t(4096) << pick(13);
  const uint64_t rb = d <= 2 ? 2ull * m : d == 3 ? 4ull + m : 4ull * (m / (g ? g : 1)) + m / 2;
  const uint64_t total = uint64_t(V) * L * rb, ds = (total + bs - 1) / bs * bs;  // wraps on purpose
  std::memcpy(&f[0], "MEKIPACK", 8);
  put32(8, 1), put32(12, 128), put32(16, V), put32(20, L), put32(24, m);
  f[28] = d, f[29] = lay;
  put32(32, g), put32(36, uint32_t(lay ? rb : L * rb)), put64(40, 16384), put64(48, ds), put32(56, bs);
  put32(60, uint32_t(ds / bs)), put64(64, 16384 + ds), put64(72, 16384 + ds + 8 * (ds / bs));
  rehash(f);
  return f;
}

void mutate_pack(std::vector<uint8_t>& f) {
  for (uint64_t n = 1 + pick(4); n-- > 0;) {
    switch (pick(5)) {
      case 0: if (!f.empty()) f[pick(f.size())] ^= uint8_t(1 + pick(255)); break;
      case 1: {  // an aligned header field set to an interesting value
        const size_t off = 8 + 4 * pick(28);
        const uint64_t v = kInteresting[pick(18)];
        if (f.size() >= off + 8) std::memcpy(&f[off], &v, pick(2) ? 4 : 8);
        break;
      }
      case 2: f.resize(pick(f.size() + 1)); break;
      case 3: f.resize(f.size() + pick(64), uint8_t(pick(2))); break;
      default: if (f.size() > 16384) f[16384 + pick(f.size() - 16384)] = uint8_t(rng()); break;
    }
  }
  if (pick(5) != 0) rehash(f);
}

void mutate_text(std::string& t) {
  static const char* kTokens[] = {"[", "]", "{", "}", "\"", ",", ":", "null", "-1", "1e999", "18446744073709551616",
                                  "\"../x\"", "\"/etc/passwd\"", "\"a//b\"", "\\u0000", "\xc3\x28", "[[[[[[[[", "0.5"};
  for (uint64_t n = 1 + pick(4); n-- > 0;) {
    const size_t at = pick(t.size() + 1);
    switch (pick(4)) {
      case 0: if (!t.empty()) t[pick(t.size())] = char(rng()); break;
      case 1: t.insert(at, kTokens[pick(18)]); break;
      case 2: if (!t.empty()) t.erase(at < t.size() ? at : 0, pick(16)); break;
      default: t.insert(at, std::string(pick(2) ? 100 : 70, '[')); break;
    }
  }
}

std::vector<uint8_t> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 10;
  uint64_t seed = 1;
  std::vector<std::vector<uint8_t>> packs, manifests;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc) seconds = std::stod(argv[++i]);
    else if (a == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else if (a.size() > 5 && a.substr(a.size() - 5) == ".json") manifests.push_back(read_file(argv[i]));
    else packs.push_back(read_file(argv[i]));
  }
  if (packs.empty() || manifests.empty()) {
    std::fprintf(stderr, "usage: fuzz_pack [--seconds S] [--seed N] PACK... MANIFEST.json...\n");
    return 2;
  }
  rng.seed(seed);
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t counts[3] = {0, 0, 0};
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    const uint8_t target = uint8_t(pick(3));
    std::vector<uint8_t> in(1, target);
    if (target == 2) {
      const auto& s = manifests[pick(manifests.size())];
      std::string t(s.begin(), s.end());
      mutate_text(t);
      in.insert(in.end(), t.begin(), t.end());
    } else {
      std::vector<uint8_t> f = pick(3) == 0 ? wrapped_header() : packs[pick(packs.size())];
      mutate_pack(f);
      if (target == 0 && f.size() > 128) f.resize(128);
      in.insert(in.end(), f.begin(), f.end());
    }
    LLVMFuzzerTestOneInput(in.data(), in.size());
    ++counts[target];
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("fuzz: %llu inputs in %.1f s (headers %llu, pack files %llu, manifests %llu), seed %llu, 0 crashes\n",
              static_cast<unsigned long long>(counts[0] + counts[1] + counts[2]), s,
              static_cast<unsigned long long>(counts[0]), static_cast<unsigned long long>(counts[1]),
              static_cast<unsigned long long>(counts[2]), static_cast<unsigned long long>(seed));
  return 0;
}
#endif
