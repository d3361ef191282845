// The generation loop of mobile_runtime/generate.py over ExecuTorch's Module API:
// lookup -> prefill (chunks of prefill_len) -> decode_one -> decode_n, with the pack read of the
// next token issued the moment it is sampled and collected just before the next decode call.
#pragma once

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "manifest.h"
#include "pack_reader.h"

namespace meki {

// Raised for ExecuTorch load/execute failures; the message names the method and error code.
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SamplingConfig {
  int64_t max_new_tokens = 64;   // generated tokens, the first (from prefill) included
  double temperature = 0.0;      // 0: greedy (argmax)
  int64_t top_k = 0;             // keep the k most likely tokens (0: all)
  double top_p = 1.0;            // keep the smallest set whose probability reaches p
  uint64_t seed = 0;             // std::mt19937_64 seed (not numpy's stream: sampled text differs from Python's)
  std::vector<int64_t> stop_ids;  // generation ends after emitting one of these
  double repeat_penalty = 1.0;   // > 1: tokens among the last repeat_last_n are made less likely (1: off)
  int64_t repeat_last_n = 64;    // how many of the latest tokens (prompt included) the penalty looks at
};

struct MemorySnapshot {
  int64_t rss = 0, rss_peak = 0, rss_anon = 0, rss_file = 0;  // /proc/self/status, bytes
  int64_t pack_resident = 0;
};
MemorySnapshot memory_snapshot(const MemoryPack* pack);

struct RunResult {
  std::vector<int64_t> tokens;
  std::string stop_reason;  // eos | max_tokens | max_seq_len
  double ttft_s = 0, prefill_s = 0, decode_s = 0, lookup_total_s = 0;  // ttft = prefill + first sample
  std::vector<double> decode_step_s, exposed_lookup_s;  // per decode step
  MemorySnapshot mem_start, mem_end;
};

// logits [V] -> token id (greedy: the first maximum, as numpy's argmax).
// recent: the tokens so far, prompt first (llama.cpp's repetition penalty looks at the last repeat_last_n)
int64_t sample(const float* logits, int64_t vocab, const SamplingConfig& cfg, std::mt19937_64& rng,
               const std::vector<int64_t>& recent = {});

// Runs a tool's body and maps what it throws to one line on stderr and the runners' exit status:
// 2 usage or bundle error, 3 memory pack error, 4 ExecuTorch error.
int run_reporting_errors(const std::function<int()>& body);

// A runner tool's main: parse (a bad command line: the message, the usage, exit 2), then run reporting errors.
template <class Args>
int tool_main(int argc, char** argv, Args (*parse)(int, char**), int (*run)(const Args&), const char* usage) {
  Args a;
  try {
    a = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n%s", e.what(), usage);
    return 2;
  }
  return run_reporting_errors([&] { return run(a); });
}

// "3,1,4" -> {3, 1, 4}; std::invalid_argument naming the bad item (the runners' --prompt-ids).
std::vector<int64_t> parse_token_ids(const std::string& s);

// A flag's value, the whole text or std::invalid_argument naming the flag: an integer in [lo, hi] (no
// "5abc", "2.9" or "1e3"), a finite number in [lo, hi] (no nan/inf), or a seed (digits only: no "-1").
int64_t parse_int_flag(const std::string& flag, const std::string& text, int64_t lo, int64_t hi);
double parse_number_flag(const std::string& flag, const std::string& text, double lo, double hi,
                         bool above_lo = false);  // above_lo: (lo, hi], else [lo, hi]
uint64_t parse_seed_flag(const std::string& flag, const std::string& text);

// Where XNNPACK runs the decode method (prefill always gets ExecuTorch's threadpool). A decode step of a
// small model is hundreds of tiny ops, and handing each to the pool's threads costs more than the op
// saves (docs/speed.md, thirteenth session): kAuto keeps decode on the calling thread when the widest op
// of a layer, the FFN's [dim x ffn_dim] projection, has fewer than kPooledDecodeMacs multiply-adds.
enum class DecodeThreads { kAuto, kPool, kCalling };
constexpr int64_t kPooledDecodeMacs = int64_t(1) << 20;
bool decode_on_calling_thread(DecodeThreads t, const Manifest& m);
DecodeThreads parse_decode_threads(const std::string& s);  // auto | pool | calling; invalid_argument otherwise

class Generator {
 public:
  // How a decode step's pack rows are read (benchmarks/bench_prefetch.py compares them):
  //   kPrefetch  a row not in the pack's cache is read by the worker thread from the moment its token
  //              is sampled; a cached one (a copy and a dequantisation, ~1 us) on the decode thread,
  //              which is cheaper than waking the worker
  //   kThread    every row by the worker;  kSync  every row on the decode thread, just before the step
  enum class Lookup { kPrefetch, kThread, kSync };
  Generator(const std::string& bundle, const std::string& target, const PackOptions& pack_opts,
            Lookup lookup = Lookup::kPrefetch, DecodeThreads decode_threads = DecodeThreads::kAuto);
  ~Generator();
  RunResult generate(const std::vector<int64_t>& prompt, const SamplingConfig& cfg,
                     const std::function<void(int64_t)>& on_token);
  const Manifest& manifest() const { return manifest_; }
  const BackboneRef& backbone() const { return *backbone_; }
  const MemoryPack* pack() const { return pack_.get(); }
  bool decode_on_calling_thread() const { return decode_calling_; }

 private:
  void prefill(const std::vector<int64_t>& prompt, RunResult& r);      // leaves logits in logits_
  void decode_one(int64_t token, int64_t pos, RunResult& r);           // rows already in rows_
  void decode_n(int64_t first, int64_t pos, const SamplingConfig& cfg, std::mt19937_64& rng,
                const std::function<void(int64_t)>& on_token, RunResult& r);
  void issue(int64_t token);         // start the worker's read of token's rows where it pays
  double fetch_rows(int64_t token);  // the decode rows of token into rows_; seconds the caller waited
  void run_method(const std::string& entry, const std::vector<executorch::runtime::EValue>& in);

  Manifest manifest_;
  const BackboneRef* backbone_ = nullptr;
  std::unique_ptr<executorch::extension::Module> module_;
  std::unique_ptr<MemoryPack> pack_;
  std::unique_ptr<Prefetcher> prefetcher_;
  Lookup lookup_ = Lookup::kPrefetch;
  bool decode_calling_ = false;  // the decode method was loaded without the threadpool
  bool issued_ = false;  // the worker is reading the rows of the token to decode next
  std::vector<float> logits_, rows_;  // logits [V] of the last call; decode rows [1, 1, L, m]
  std::vector<int64_t> history_;      // prompt + tokens so far (the repetition penalty's look-back)
  int64_t tok_ = 0, pos_ = 0;         // decode inputs, wrapped once as tensors
  std::vector<executorch::runtime::EValue> decode_in_;
  executorch::extension::TensorPtr tok_t_, pos_t_, rows_t_;
};

}  // namespace meki
