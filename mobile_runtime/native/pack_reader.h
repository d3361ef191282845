// MeKi memory pack reader, format v1 (contract/PACK_FORMAT.md): header and checksum
// verification in the spec's order, pread or mmap access, fp16/bf16/int8/int4 -> float32,
// a bounded LRU cache of raw token records, and a one-request background prefetcher.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace meki {

// What went wrong; the runner turns every code into a non-zero exit status.
enum class PackErrc {
  kIo = 1,          // open/stat/read failed, not a regular file
  kTooShort,        // file shorter than the 128-byte header (check 1)
  kTruncated,       // file shorter or longer than the header says, or shrank while open (check 6)
  kNotAPack,        // bad magic (check 2)
  kVersion,         // unsupported version (check 3)
  kHeaderChecksum,  // header checksum mismatch (check 4)
  kBadHeader,       // unknown code, reserved field set, derived field wrong (check 5)
  kPadding,         // header padding not zero (check 7)
  kTableChecksum,   // checksum table mismatch (check 8)
  kFingerprint,     // pack folded from another model (check 9)
  kBlockChecksum,   // a data block fails its checksum (check 10)
  kToken,           // token id out of [0, V)
  kClosed,          // use after close
};
const char* pack_errc_name(PackErrc c);
// The conformance/CHECKS.md name of a code ("pack.magic", ...): what every reader reports.
const char* pack_check_name(PackErrc c);

class PackError : public std::runtime_error {
 public:
  PackError(PackErrc code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  PackErrc code() const { return code_; }
  const char* check() const { return pack_check_name(code_); }

 private:
  PackErrc code_;
};

enum class DType : uint8_t { kFp16 = 1, kBf16 = 2, kInt8 = 3, kInt4 = 4 };
enum class Layout : uint8_t { kTokenMajor = 0, kLayerMajor = 1 };
const char* dtype_name(DType d);
const char* layout_name(Layout l);

// The decoded, validated fixed header (sizes in bytes).
struct PackHeader {
  uint32_t vocab_size = 0, num_layers = 0, d_mem = 0;
  DType dtype = DType::kFp16;
  Layout layout = Layout::kTokenMajor;
  uint32_t group_size = 0;     // int4: values per scale; int8: d_mem; floats: 0
  uint32_t row_bytes = 0;      // one encoded row: fp32 scales then packed values
  uint32_t record_stride = 0;  // token-major: L * row_bytes; layer-major: row_bytes
  uint64_t data_offset = 0, data_size = 0;
  uint32_t block_size = 0, num_blocks = 0;
  uint64_t table_offset = 0, file_size = 0;
  std::string fingerprint;  // 32 lowercase hex chars
  uint64_t table_checksum = 0;
};

uint64_t xxh3_64(const void* data, size_t n);  // XXH3_64bits, seed 0 (libxxhash)

// Parse and check 128 header bytes (checks 2-5 of the spec); throws PackError.
PackHeader parse_header(const uint8_t* buf);

// One row (m values) -> float32 exactly as the spec writes it.
void decode_row(const uint8_t* row, DType dtype, uint32_t d_mem, uint32_t group_size, float* out);

enum class PackMode { kPread, kMmap };

struct PackOptions {
  PackMode mode = PackMode::kPread;
  size_t cache_bytes = 8u << 20;     // LRU of raw token records; 0 disables it
  std::string expected_fingerprint;  // empty: not checked
  bool verify_on_read = true;        // check each block the first time a read touches it
};

class MemoryPack {
 public:
  // Opens and checks the pack (spec checks 1-9); throws PackError naming the problem.
  static std::unique_ptr<MemoryPack> open(const std::string& path, const PackOptions& opts = {});
  ~MemoryPack();
  MemoryPack(const MemoryPack&) = delete;
  MemoryPack& operator=(const MemoryPack&) = delete;

  const PackHeader& header() const { return h_; }
  size_t row_floats() const { return size_t(h_.num_layers) * h_.d_mem; }  // floats per token
  // ids [n] -> out [n, L, m] float32. Thread-safe.
  void lookup(const int64_t* ids, size_t n, float* out);
  bool cached(int64_t tok) const;  // its record is in the LRU cache (a lookup reads no storage)
  void verify();                 // every data block against its checksum (check 10, full)
  int64_t resident_bytes() const;  // cache + table + verified map (+ mapped pages resident)
  size_t cache_used() const;
  void close();

 private:
  MemoryPack(const std::string& path, int fd, PackHeader h, const PackOptions& opts);
  void gather_token(int64_t tok, uint8_t* dst);  // raw record [L * row_bytes]
  void read_checked(uint64_t off, size_t n, uint8_t* dst);
  void read_raw(uint64_t off, size_t n, uint8_t* dst) const;
  void check_blocks(uint64_t first, const uint8_t* blocks, size_t count);
  void check_still_whole() const;  // mmap: the file has not shrunk (else a page touch is SIGBUS)
  bool cache_get(int64_t tok, uint8_t* dst);
  void cache_put(int64_t tok, const uint8_t* rec);

  std::string path_;
  int fd_ = -1;
  PackHeader h_;
  PackOptions opts_;
  size_t record_bytes_;
  std::vector<uint64_t> sums_;
  std::vector<uint8_t> verified_;
  const uint8_t* map_ = nullptr;
  mutable std::mutex mu_;  // guards cache_ and verified_
  std::list<std::pair<int64_t, std::vector<uint8_t>>> lru_;  // front = most recent
  std::unordered_map<int64_t, decltype(lru_)::iterator> index_;
  size_t cache_used_ = 0;
};

// One background worker: submit() starts the lookup of a token's rows, collect() waits for
// them and returns how long it blocked (the "exposed lookup time").
class Prefetcher {
 public:
  explicit Prefetcher(MemoryPack* pack);
  ~Prefetcher();
  void submit(int64_t token);
  double collect(float* out);  // out [L * m]; rethrows a PackError from the worker

 private:
  void loop();
  MemoryPack* pack_;
  std::vector<float> rows_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t token_ = -1;
  bool pending_ = false, done_ = false, stop_ = false;
  std::exception_ptr error_;
  std::thread worker_;
};

}  // namespace meki
