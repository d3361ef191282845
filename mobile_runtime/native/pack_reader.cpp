// MeKi memory pack reader (format v1). See pack_reader.h and contract/PACK_FORMAT.md.
#include "pack_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the memory pack is little-endian; this reader memcpy's scales on little-endian hosts only"
#endif

namespace meki {
namespace {

constexpr char kMagic[8] = {'M', 'E', 'K', 'I', 'P', 'A', 'C', 'K'};
constexpr uint32_t kVersion = 1, kHeaderSize = 128, kHeaderChecksumOffset = 120;
constexpr uint64_t kDataAlign = 16 * 1024;
constexpr uint32_t kMinBlock = 4 * 1024, kMaxBlock = 16 * 1024 * 1024;
constexpr size_t kCacheEntryOverhead = 96;  // list node + hash node + vector header, roughly

template <typename T>
T le(const uint8_t* p) {  // little-endian load, any alignment
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= T(p[i]) << (8 * i);
  return v;
}

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s += {d[p[i] >> 4], d[p[i] & 15]};
  return s;
}

[[noreturn]] void fail(PackErrc c, const std::string& msg) { throw PackError(c, msg); }

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24 is exact in float32
    float f = float(mant) * 5.9604644775390625e-08f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// Checked u64 arithmetic: false when the exact result does not fit (a wrap is a mismatch, never a pass).
bool mul(uint64_t a, uint64_t b, uint64_t* r) { return !__builtin_mul_overflow(a, b, r); }
bool add(uint64_t a, uint64_t b, uint64_t* r) { return !__builtin_add_overflow(a, b, r); }

// Exact row bytes in 64 bits (int4 with g = 2 and m near 2^31 exceeds 32 bits). g > 0 for int4.
uint64_t row_bytes_of(DType d, uint64_t m, uint64_t g) {
  switch (d) {
    case DType::kFp16:
    case DType::kBf16: return 2 * m;
    case DType::kInt8: return 4 + m;
    case DType::kInt4: return 4 * (m / g) + m / 2;
  }
  return 0;
}

// Check 5 beyond the codes: shapes and settings a v1 pack can hold; "" when valid.
std::string shape_problem(uint32_t V, uint32_t L, uint32_t m, DType d, uint32_t g, uint32_t bs) {
  std::ostringstream o;
  if (V < 1 || V >= (1u << 31)) o << "vocab_size " << V << " not in [1, 2^31)";
  else if (L < 1 || L >= (1u << 31)) o << "num_layers " << L << " not in [1, 2^31)";
  else if (m < 1 || m >= (1u << 31) || m % 8) o << "d_mem " << m << " is not a multiple of 8 in [8, 2^31)";
  else if (d == DType::kInt4 && (g < 2 || g % 2 || m % g))
    o << "int4 group_size " << g << " must be even and divide d_mem " << m;
  else if ((bs & (bs - 1)) || bs < kMinBlock || bs > kMaxBlock)
    o << "block_size " << bs << " is not a power of two in [4096, 16 MiB]";
  return o.str();
}

// The sizes the formulas of PACK_FORMAT.md section 2 give, computed exactly; ok=false if the data
// section would exceed 2^62 bytes (or a product overflows 64 bits on the way there).
struct Derived {
  bool ok = false;
  uint64_t row_bytes = 0, stride = 0, data_size = 0, blocks = 0, table_offset = 0, file_size = 0;
};

Derived derive(uint32_t V, uint32_t L, uint32_t m, DType d, Layout lay, uint32_t g, uint32_t bs) {
  Derived r;
  r.row_bytes = row_bytes_of(d, m, d == DType::kInt4 ? g : 1);
  uint64_t vl = 0, total = 0;
  if (!mul(V, L, &vl) || !mul(vl, r.row_bytes, &total) || total > (uint64_t(1) << 62)) return r;
  if (lay == Layout::kTokenMajor) {
    if (!mul(L, r.row_bytes, &r.stride)) return r;
  } else {
    r.stride = r.row_bytes;
  }
  r.data_size = (total + bs - 1) / bs * bs;  // total <= 2^62, bs <= 2^24: no wrap
  r.blocks = r.data_size / bs;
  r.table_offset = kDataAlign + r.data_size;
  r.ok = add(r.table_offset, 8 * r.blocks, &r.file_size);
  return r;
}

}  // namespace

const char* pack_errc_name(PackErrc c) {
  switch (c) {
    case PackErrc::kIo: return "io";
    case PackErrc::kTooShort: return "too_short";
    case PackErrc::kTruncated: return "truncated";
    case PackErrc::kNotAPack: return "not_a_pack";
    case PackErrc::kVersion: return "version";
    case PackErrc::kHeaderChecksum: return "header_checksum";
    case PackErrc::kBadHeader: return "bad_header";
    case PackErrc::kPadding: return "padding";
    case PackErrc::kTableChecksum: return "table_checksum";
    case PackErrc::kFingerprint: return "fingerprint";
    case PackErrc::kBlockChecksum: return "block_checksum";
    case PackErrc::kToken: return "token";
    case PackErrc::kClosed: return "closed";
  }
  return "unknown";
}

const char* pack_check_name(PackErrc c) {
  switch (c) {
    case PackErrc::kIo: return "pack.io";
    case PackErrc::kTooShort: return "pack.too_short";
    case PackErrc::kTruncated: return "pack.file_size";
    case PackErrc::kNotAPack: return "pack.magic";
    case PackErrc::kVersion: return "pack.version";
    case PackErrc::kHeaderChecksum: return "pack.header_checksum";
    case PackErrc::kBadHeader: return "pack.header_fields";
    case PackErrc::kPadding: return "pack.padding";
    case PackErrc::kTableChecksum: return "pack.table_checksum";
    case PackErrc::kFingerprint: return "pack.fingerprint";
    case PackErrc::kBlockChecksum: return "pack.block_checksum";
    case PackErrc::kToken: return "pack.token";
    case PackErrc::kClosed: return "pack.io";
  }
  return "pack.io";
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFp16: return "fp16";
    case DType::kBf16: return "bf16";
    case DType::kInt8: return "int8";
    case DType::kInt4: return "int4";
  }
  return "?";
}

const char* layout_name(Layout l) { return l == Layout::kTokenMajor ? "token-major" : "layer-major"; }

uint64_t xxh3_64(const void* data, size_t n) { return XXH3_64bits(data, n); }

PackHeader parse_header(const uint8_t* b) {
  if (std::memcmp(b, kMagic, 8) != 0) fail(PackErrc::kNotAPack, "bad magic: not a MeKi memory pack");
  const uint32_t version = le<uint32_t>(b + 8);
  if (version != kVersion)
    fail(PackErrc::kVersion, "unsupported pack version " + std::to_string(version) +
                                 " (this reader reads version 1)");
  if (xxh3_64(b, kHeaderChecksumOffset) != le<uint64_t>(b + kHeaderChecksumOffset))
    fail(PackErrc::kHeaderChecksum, "header checksum mismatch: the header is damaged");
  const uint8_t dcode = b[28], lcode = b[29];
  if (dcode < 1 || dcode > 4 || lcode > 1)
    fail(PackErrc::kBadHeader, "unknown dtype code " + std::to_string(dcode) + " or layout code " +
                                   std::to_string(lcode));
  PackHeader h;
  h.vocab_size = le<uint32_t>(b + 16);
  h.num_layers = le<uint32_t>(b + 20);
  h.d_mem = le<uint32_t>(b + 24);
  h.dtype = DType(dcode);
  h.layout = Layout(lcode);
  h.group_size = le<uint32_t>(b + 32);
  h.record_stride = le<uint32_t>(b + 36);
  h.data_offset = le<uint64_t>(b + 40);
  h.data_size = le<uint64_t>(b + 48);
  h.block_size = le<uint32_t>(b + 56);
  h.num_blocks = le<uint32_t>(b + 60);
  h.table_offset = le<uint64_t>(b + 64);
  h.file_size = le<uint64_t>(b + 72);
  h.fingerprint = hex(b + 80, 16);
  h.table_checksum = le<uint64_t>(b + 96);
  const std::string shape = shape_problem(h.vocab_size, h.num_layers, h.d_mem, h.dtype, h.group_size, h.block_size);
  if (!shape.empty()) fail(PackErrc::kBadHeader, "invalid header: " + shape);
  bool reserved_zero = le<uint16_t>(b + 30) == 0;
  for (int i = 104; i < 120; ++i) reserved_zero = reserved_zero && b[i] == 0;
  const uint32_t want_group = h.dtype == DType::kInt4 ? h.group_size : h.dtype == DType::kInt8 ? h.d_mem : 0;
  const Derived w = derive(h.vocab_size, h.num_layers, h.d_mem, h.dtype, h.layout, h.group_size, h.block_size);
  if (!w.ok) fail(PackErrc::kBadHeader, "invalid header: pack too large (more than 2^62 data bytes)");
  std::ostringstream bad;  // every comparison in 64 bits: a stored u32 never equals a value >= 2^32
  if (le<uint32_t>(b + 12) != kHeaderSize) bad << " header_size=" << le<uint32_t>(b + 12);
  if (!reserved_zero) bad << " reserved fields not zero;";
  if (h.group_size != want_group) bad << " group_size=" << h.group_size << " (expected " << want_group << ")";
  if (uint64_t(h.record_stride) != w.stride) bad << " record_stride=" << h.record_stride << " (expected " << w.stride << ")";
  if (h.data_offset != kDataAlign) bad << " data_offset=" << h.data_offset << " (expected " << kDataAlign << ")";
  if (h.data_size != w.data_size) bad << " data_size=" << h.data_size << " (expected " << w.data_size << ")";
  if (uint64_t(h.num_blocks) != w.blocks) bad << " num_blocks=" << h.num_blocks << " (expected " << w.blocks << ")";
  if (h.table_offset != w.table_offset) bad << " table_offset=" << h.table_offset << " (expected " << w.table_offset << ")";
  if (h.file_size != w.file_size) bad << " file_size=" << h.file_size << " (expected " << w.file_size << ")";
  h.row_bytes = uint32_t(w.row_bytes);  // fits: the stride (<= 2^32-1) equals it or L times it
  if (!bad.str().empty()) fail(PackErrc::kBadHeader, "inconsistent header fields:" + bad.str());
  return h;
}

void decode_row(const uint8_t* row, DType dtype, uint32_t m, uint32_t g, float* out) {
  switch (dtype) {
    case DType::kFp16:
      for (uint32_t i = 0; i < m; ++i) out[i] = half_to_float(le<uint16_t>(row + 2 * i));
      return;
    case DType::kBf16:
      for (uint32_t i = 0; i < m; ++i) {
        const uint32_t bits = uint32_t(le<uint16_t>(row + 2 * i)) << 16;
        std::memcpy(out + i, &bits, 4);
      }
      return;
    case DType::kInt8: {
      float scale;
      std::memcpy(&scale, row, 4);
      const int8_t* q = reinterpret_cast<const int8_t*>(row + 4);
      for (uint32_t i = 0; i < m; ++i) out[i] = float(q[i]) * scale;
      return;
    }
    case DType::kInt4: {
      const uint8_t* v = row + 4 * (m / g);  // m/g fp32 group scales, then m/2 packed bytes
      for (uint32_t i = 0; i < m; ++i) {
        float s;
        std::memcpy(&s, row + 4 * (i / g), 4);
        const int n = (i & 1) ? (v[i / 2] >> 4) : (v[i / 2] & 15);
        out[i] = float(n - 8) * s;
      }
      return;
    }
  }
}

// ------------------------------------------------------------------ MemoryPack

std::unique_ptr<MemoryPack> MemoryPack::open(const std::string& path, const PackOptions& opts) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not hang the open
  if (fd < 0) fail(PackErrc::kIo, "cannot open pack " + path + ": " + std::strerror(errno));
  try {
    struct stat st {};
    if (fstat(fd, &st) != 0) fail(PackErrc::kIo, "cannot stat pack " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(PackErrc::kIo, "cannot open pack " + path + ": not a regular file");
    const uint64_t actual = uint64_t(st.st_size);
    if (actual < kHeaderSize)
      fail(PackErrc::kTooShort, "file is " + std::to_string(actual) +
                                     " bytes, too small for a 128-byte pack header (truncated or not a pack)");
    uint8_t buf[kHeaderSize];
    if (pread(fd, buf, kHeaderSize, 0) != ssize_t(kHeaderSize)) fail(PackErrc::kIo, "cannot read the header");
    PackHeader h = parse_header(buf);
    if (actual != h.file_size)
      fail(PackErrc::kTruncated, "file is " + std::to_string(actual) + " bytes but its header says " +
                                     std::to_string(h.file_size) + (actual < h.file_size ? " (truncated)" : " (extra bytes)"));
    std::vector<uint8_t> pad(h.data_offset - kHeaderSize);
    if (pread(fd, pad.data(), pad.size(), kHeaderSize) != ssize_t(pad.size()))
      fail(PackErrc::kIo, "cannot read the header padding");
    if (std::any_of(pad.begin(), pad.end(), [](uint8_t x) { return x != 0; }))
      fail(PackErrc::kPadding, "header padding is not zero: the header region is damaged");
    return std::unique_ptr<MemoryPack>(new MemoryPack(path, fd, std::move(h), opts));
  } catch (...) {
    ::close(fd);
    throw;
  }
}

// A token's record is copied whole (and cached); a larger one is refused rather than allocated.
constexpr uint64_t kMaxRecordBytes = uint64_t(1) << 30;

MemoryPack::MemoryPack(const std::string& path, int fd, PackHeader h, const PackOptions& opts)
    : path_(path), fd_(fd), h_(std::move(h)), opts_(opts), record_bytes_(0) {
  uint64_t rec = 0;
  if (!mul(h_.num_layers, h_.row_bytes, &rec) || rec > kMaxRecordBytes || h_.file_size > uint64_t(SIZE_MAX))
    fail(PackErrc::kBadHeader, "a token record of " + std::to_string(h_.num_layers) + " x " +
                                   std::to_string(h_.row_bytes) + " bytes is over this reader's 1 GiB limit");
  record_bytes_ = size_t(rec);
  sums_.resize(h_.num_blocks);      // bounded by the file: its size was checked against file_size
  verified_.assign(h_.num_blocks, 0);
  const size_t table_bytes = 8 * size_t(h_.num_blocks);
  std::vector<uint8_t> table(table_bytes);
  read_raw(h_.table_offset, table_bytes, table.data());
  if (xxh3_64(table.data(), table_bytes) != h_.table_checksum)
    fail(PackErrc::kTableChecksum, "checksum table does not match its checksum in the header");
  for (size_t k = 0; k < h_.num_blocks; ++k) sums_[k] = le<uint64_t>(table.data() + 8 * k);
  if (!opts_.expected_fingerprint.empty() && opts_.expected_fingerprint != h_.fingerprint)
    fail(PackErrc::kFingerprint, "pack fingerprint " + h_.fingerprint + " does not match the model's " +
                                     opts_.expected_fingerprint + ": it was folded from another model");
  if (opts_.mode == PackMode::kMmap) {
    void* p = mmap(nullptr, h_.file_size, PROT_READ, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) fail(PackErrc::kIo, std::string("mmap failed: ") + std::strerror(errno));
    madvise(p, h_.file_size, MADV_RANDOM);  // one token = one small read; no readahead
    map_ = static_cast<const uint8_t*>(p);
  } else {
#ifdef POSIX_FADV_RANDOM
    posix_fadvise(fd_, off_t(h_.data_offset), off_t(h_.data_size), POSIX_FADV_RANDOM);
#endif
  }
}

MemoryPack::~MemoryPack() { close(); }

void MemoryPack::close() {
  if (map_ != nullptr) munmap(const_cast<uint8_t*>(map_), h_.file_size);
  map_ = nullptr;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void MemoryPack::lookup(const int64_t* ids, size_t n, float* out) {
  if (fd_ < 0) fail(PackErrc::kClosed, "pack is closed");
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= int64_t(h_.vocab_size))
      fail(PackErrc::kToken, "token id " + std::to_string(ids[i]) + " out of range [0, " +
                                 std::to_string(h_.vocab_size) + ")");
  std::vector<uint8_t> rec(record_bytes_);
  for (size_t i = 0; i < n; ++i) {
    gather_token(ids[i], rec.data());
    for (uint32_t l = 0; l < h_.num_layers; ++l)
      decode_row(rec.data() + size_t(l) * h_.row_bytes, h_.dtype, h_.d_mem, h_.group_size,
                 out + (i * h_.num_layers + l) * h_.d_mem);
  }
}

void MemoryPack::gather_token(int64_t tok, uint8_t* dst) {
  if (opts_.cache_bytes > 0 && cache_get(tok, dst)) return;
  if (h_.layout == Layout::kTokenMajor) {
    read_checked(h_.data_offset + uint64_t(tok) * h_.record_stride, record_bytes_, dst);
  } else {
    for (uint32_t l = 0; l < h_.num_layers; ++l)
      read_checked(h_.data_offset + (uint64_t(l) * h_.vocab_size + uint64_t(tok)) * h_.row_bytes, h_.row_bytes,
                   dst + size_t(l) * h_.row_bytes);
  }
  if (opts_.cache_bytes > 0) cache_put(tok, dst);
}

void MemoryPack::read_checked(uint64_t off, size_t n, uint8_t* dst) {
  const uint64_t bs = h_.block_size, b0 = (off - h_.data_offset) / bs, b1 = (off + n - 1 - h_.data_offset) / bs;
  bool all = true;
  if (opts_.verify_on_read) {
    std::lock_guard<std::mutex> g(mu_);
    for (uint64_t b = b0; b <= b1 && all; ++b) all = verified_[b] != 0;
  }
  if (all) return read_raw(off, n, dst);
  const uint64_t start = h_.data_offset + b0 * bs, span = (b1 - b0 + 1) * bs;
  if (map_ != nullptr) {
    check_still_whole();
    madvise(const_cast<uint8_t*>(map_) + (start & ~uint64_t(4095)), span + (start & 4095), MADV_WILLNEED);
    check_blocks(b0, map_ + start, size_t(b1 - b0 + 1));
    std::memcpy(dst, map_ + off, n);
    return;
  }
  std::vector<uint8_t> blocks(span);
  read_raw(start, span, blocks.data());
  check_blocks(b0, blocks.data(), size_t(b1 - b0 + 1));
  std::memcpy(dst, blocks.data() + (off - start), n);
}

// Class 2 of issue 12: a mapped file truncated by someone else turns the next touch of a page past
// its new end into SIGBUS. The reader checks the size before touching the mapping (one fstat per
// read; pread mode, the default, needs none: a short read is an error). A truncation between this
// fstat and the copy is not covered; a SIGBUS handler would be, but a process-wide handler with
// siglongjmp is unsafe in a library shared with ExecuTorch's threads.
void MemoryPack::check_still_whole() const {
  struct stat st {};
  if (fstat(fd_, &st) != 0) fail(PackErrc::kIo, "cannot stat pack " + path_ + ": " + std::strerror(errno));
  if (uint64_t(st.st_size) < h_.file_size)
    fail(PackErrc::kTruncated, path_ + " shrank to " + std::to_string(st.st_size) + " bytes while open (header says " +
                                   std::to_string(h_.file_size) + "): refusing to read the mapping");
}

void MemoryPack::read_raw(uint64_t off, size_t n, uint8_t* dst) const {
  if (map_ != nullptr && off >= h_.data_offset && off + n <= h_.table_offset) {
    check_still_whole();
    std::memcpy(dst, map_ + off, n);
    return;
  }
  size_t done = 0;
  while (done < n) {
    const ssize_t r = pread(fd_, dst + done, n - done, off_t(off + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(PackErrc::kIo, "read of " + path_ + " at offset " + std::to_string(off) + " failed: " + std::strerror(errno));
    if (r == 0) fail(PackErrc::kTruncated, "short read at offset " + std::to_string(off + done) + ": the file shrank");
    done += size_t(r);
  }
}

void MemoryPack::check_blocks(uint64_t first, const uint8_t* blocks, size_t count) {
  const size_t bs = h_.block_size;
  for (size_t k = 0; k < count; ++k) {
    const uint64_t b = first + k;
    {
      std::lock_guard<std::mutex> g(mu_);
      if (verified_[b]) continue;
    }
    if (xxh3_64(blocks + k * bs, bs) != sums_[b]) {
      const uint64_t start = h_.data_offset + b * bs;
      fail(PackErrc::kBlockChecksum, "data block " + std::to_string(b) + " (bytes " + std::to_string(start) + ".." +
                                         std::to_string(start + bs) + ") does not match its checksum: the pack is damaged");
    }
    std::lock_guard<std::mutex> g(mu_);
    verified_[b] = 1;
  }
}

void MemoryPack::verify() {
  const size_t bs = h_.block_size, step = std::max<size_t>(1, (8u << 20) / bs);
  std::vector<uint8_t> buf;
  for (size_t first = 0; first < h_.num_blocks; first += step) {
    const size_t n = std::min<size_t>(step, h_.num_blocks - first);
    buf.resize(n * bs);
    const uint64_t start = h_.data_offset + first * bs;
    size_t done = 0;  // always pread, whatever the mode: a full verify should not map the file
    while (done < buf.size()) {
      const ssize_t r = pread(fd_, buf.data() + done, buf.size() - done, off_t(start + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) fail(PackErrc::kTruncated, "short read at offset " + std::to_string(start + done) + ": the file shrank");
      done += size_t(r);
    }
    check_blocks(first, buf.data(), n);
  }
}

bool MemoryPack::cached(int64_t tok) const {
  if (opts_.cache_bytes == 0) return false;
  std::lock_guard<std::mutex> g(mu_);
  return index_.count(tok) != 0;
}

bool MemoryPack::cache_get(int64_t tok, uint8_t* dst) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = index_.find(tok);
  if (it == index_.end()) return false;
  lru_.splice(lru_.begin(), lru_, it->second);
  std::memcpy(dst, it->second->second.data(), record_bytes_);
  return true;
}

void MemoryPack::cache_put(int64_t tok, const uint8_t* rec) {
  const size_t cost = record_bytes_ + kCacheEntryOverhead;
  if (cost > opts_.cache_bytes) return;
  std::lock_guard<std::mutex> g(mu_);
  if (index_.count(tok)) return;
  lru_.emplace_front(tok, std::vector<uint8_t>(rec, rec + record_bytes_));
  index_[tok] = lru_.begin();
  cache_used_ += cost;
  while (cache_used_ > opts_.cache_bytes) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
    cache_used_ -= cost;
  }
}

size_t MemoryPack::cache_used() const {
  std::lock_guard<std::mutex> g(mu_);
  return cache_used_;
}

int64_t MemoryPack::resident_bytes() const {
  const int64_t own = int64_t(cache_used()) + int64_t(sums_.size() * 8 + verified_.size());
  if (map_ == nullptr) return own;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((h_.file_size + page - 1) / page);
  if (mincore(const_cast<uint8_t*>(map_), h_.file_size, vec.data()) != 0) return -1;
  int64_t pages = 0;
  for (unsigned char v : vec) pages += v & 1;
  return pages * int64_t(page) + own;
}

// ------------------------------------------------------------------ Prefetcher

Prefetcher::Prefetcher(MemoryPack* pack) : pack_(pack), rows_(pack->row_floats()), worker_([this] { loop(); }) {}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void Prefetcher::submit(int64_t token) {
  {
    std::lock_guard<std::mutex> g(mu_);
    token_ = token;
    pending_ = true;
    done_ = false;
    error_ = nullptr;
  }
  cv_.notify_all();
}

double Prefetcher::collect(float* out) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [this] { return done_ || !pending_; });
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  pending_ = done_ = false;
  if (error_) std::rethrow_exception(error_);
  std::memcpy(out, rows_.data(), rows_.size() * sizeof(float));
  return waited;
}

void Prefetcher::loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [this] { return stop_ || (pending_ && !done_); });
    if (stop_) return;
    const int64_t tok = token_;
    lk.unlock();
    std::exception_ptr err;
    try {
      pack_->lookup(&tok, 1, rows_.data());
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    error_ = err;
    done_ = true;
    cv_.notify_all();
  }
}

}  // namespace meki
