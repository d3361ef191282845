// meki_runner: the native runner. Same flags, loop and JSON stats as `python -m mobile_runtime.run`
// (token-id prompts only: the tokenizer stays on the Python/app side).
//
//   meki_runner BUNDLE --prompt-ids 3,1,4 [--max-new-tokens 64] [--ignore-eos] [--stats out.json]
//               [--pack-mode pread|mmap] [--cache-mib 8] [--temperature 0 --top-k 0 --top-p 1 --seed 0]
//               [--repeat-penalty 1 --repeat-last-n 64]
//               [--backend executorch|TARGET] [--warmup N] [--quiet] [--lookup prefetch|thread|sync] [--single-thread]
//
// Exit status: 0 ok, 2 usage or bundle error, 3 memory pack error, 4 ExecuTorch error.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <executorch/extension/threadpool/threadpool_guard.h>

#include "generator.h"

namespace {

struct Args {
  std::string bundle, prompt_ids, backend = "executorch", pack_mode = "pread", stats, lookup = "prefetch";
  meki::DecodeThreads decode_threads = meki::DecodeThreads::kAuto;
  int64_t max_new_tokens = 64;
  double temperature = 0.0, top_p = 1.0, cache_mib = 8.0, repeat_penalty = 1.0;
  int64_t top_k = 0, warmup = 0, repeat_last_n = 64;
  uint64_t seed = 0;
  bool ignore_eos = false, quiet = false, single_thread = false;
};

constexpr int64_t kMaxCount = int64_t(1) << 31;  // token counts: any KV cache is far smaller

// --stats PATH: refused up front unless it is a regular file or does not exist yet under a folder (a
// device, FIFO or folder there would be replaced by the rename that writes it).
void check_output_file(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode) && stat(path.c_str(), &st) != 0)
      throw std::invalid_argument("--stats " + path + ": a dangling link");
    if (!S_ISREG(st.st_mode)) throw std::invalid_argument("--stats " + path + " exists and is not a regular file");
    return;
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, std::max<size_t>(slash, 1));
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::invalid_argument("--stats " + path + ": " + dir + " is not a folder");
}

const char* kUsage =
    "usage: meki_runner BUNDLE --prompt-ids IDS [--max-new-tokens N] [--ignore-eos] [--stats PATH]\n"
    "       [--pack-mode pread|mmap] [--cache-mib MIB] [--temperature T] [--top-k K] [--top-p P]\n"
    "       [--repeat-penalty R] [--repeat-last-n N]\n"
    "       [--seed S] [--backend executorch|TARGET] [--warmup N] [--quiet] [--lookup prefetch|thread|sync]\n"
    "       [--decode-threads auto|pool|calling] [--single-thread]\n"
    "  --warmup N: an untimed generate of N tokens first (as ExecuTorch's LLM runner does)\n"
    "  --lookup: prefetch (default): rows not in the pack cache read by a worker thread from the moment\n"
    "            the token is sampled, cached rows on the decode thread; thread: every row by the worker;\n"
    "            sync: every row on the decode thread (benchmarks/bench_prefetch.py compares them)\n"
    "  --decode-threads: where XNNPACK runs decode steps: ExecuTorch's threadpool (pool), this thread\n"
    "            (calling), or auto (default): calling when the model's FFN projection (dim x ffn_dim) has\n"
    "            fewer than 2^20 multiply-adds (per-op dispatch to the pool costs more than it saves), else pool\n"
    "  --single-thread: no XNNPACK threadpool (everything on the calling thread: callgrind counts)\n";

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(k + " needs a value");
      return argv[++i];
    };
    if (k == "--prompt-ids") a.prompt_ids = val();
    else if (k == "--prompt") throw std::invalid_argument("--prompt needs a tokenizer: the native runner takes --prompt-ids");
    else if (k == "--max-new-tokens") a.max_new_tokens = meki::parse_int_flag(k, val(), 1, kMaxCount);
    else if (k == "--temperature") a.temperature = meki::parse_number_flag(k, val(), 0.0, 1e6);
    else if (k == "--top-k") a.top_k = meki::parse_int_flag(k, val(), 0, kMaxCount);
    else if (k == "--top-p") a.top_p = meki::parse_number_flag(k, val(), 0.0, 1.0, true);
    else if (k == "--seed") a.seed = meki::parse_seed_flag(k, val());
    else if (k == "--repeat-penalty") a.repeat_penalty = meki::parse_number_flag(k, val(), 0.0, 1e6, true);
    else if (k == "--repeat-last-n") a.repeat_last_n = meki::parse_int_flag(k, val(), 0, kMaxCount);
    else if (k == "--ignore-eos") a.ignore_eos = true;
    else if (k == "--pack-mode") a.pack_mode = val();
    else if (k == "--cache-mib") a.cache_mib = meki::parse_number_flag(k, val(), 0.0, 1 << 20);  // up to 1 TiB
    else if (k == "--stats") a.stats = val();
    else if (k == "--backend") a.backend = val();
    else if (k == "--quiet") a.quiet = true;
    else if (k == "--warmup") a.warmup = meki::parse_int_flag(k, val(), 0, kMaxCount);
    else if (k == "--lookup") a.lookup = val();
    else if (k == "--single-thread") a.single_thread = true;
    else if (k == "--decode-threads") a.decode_threads = meki::parse_decode_threads(val());
    else if (k == "-h" || k == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
    else if (!k.empty() && k[0] == '-') throw std::invalid_argument("unknown option " + k);
    else if (a.bundle.empty()) a.bundle = k;
    else throw std::invalid_argument("unexpected argument " + k);
  }
  if (a.bundle.empty() || a.prompt_ids.empty()) throw std::invalid_argument("BUNDLE and --prompt-ids are required");
  if (a.pack_mode != "pread" && a.pack_mode != "mmap")
    throw std::invalid_argument("--pack-mode must be pread or mmap, got " + a.pack_mode);
  if (a.lookup != "prefetch" && a.lookup != "thread" && a.lookup != "sync")
    throw std::invalid_argument("--lookup must be prefetch, thread or sync, got " + a.lookup);
  if (!a.stats.empty()) check_output_file(a.stats);  // before the run: a bad path must not cost a generation
  return a;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The fields of mobile_runtime/stats.py (RunStats), in its order.
nlohmann::ordered_json stats_json(const meki::Generator& gen, size_t prompt_tokens, const meki::RunResult& r) {
  const size_t steps = r.tokens.size() - 1;  // the first token came from prefill
  double exposed = 0;
  for (double x : r.exposed_lookup_s) exposed += x;
  nlohmann::ordered_json j;
  j["runner"] = "native";
  j["bundle"] = gen.manifest().name;
  j["target"] = gen.backbone().target;
  j["memory"] = gen.manifest().memory;
  j["prompt_tokens"] = prompt_tokens;
  j["generated_tokens"] = r.tokens.size();
  j["stop_reason"] = r.stop_reason;
  j["ttft_s"] = r.ttft_s;
  j["prefill_s"] = r.prefill_s;
  j["prefill_tok_s"] = r.prefill_s > 0 ? double(prompt_tokens) / r.prefill_s : 0.0;
  j["decode_s"] = r.decode_s;
  j["decode_tok_s"] = steps && r.decode_s > 0 ? double(steps) / r.decode_s : 0.0;
  j["decode_step_median_s"] = median(r.decode_step_s);
  j["exposed_lookup_s"] = r.exposed_lookup_s;
  j["exposed_lookup_total_s"] = exposed;
  j["exposed_lookup_fraction"] = r.decode_s > 0 ? exposed / r.decode_s : 0.0;
  j["lookup_total_s"] = r.lookup_total_s;
  j["rss_start_bytes"] = r.mem_start.rss;
  j["rss_end_bytes"] = r.mem_end.rss;
  j["rss_peak_bytes"] = r.mem_end.rss_peak;
  j["rss_anon_bytes"] = r.mem_end.rss_anon;
  j["rss_file_bytes"] = r.mem_end.rss_file;
  j["pack_resident_bytes"] = std::max<int64_t>(0, r.mem_end.pack_resident);
  j["tokens"] = r.tokens;
  j["text"] = nullptr;  // no tokenizer in the native runner
  j["format"] = "meki-run-stats";
  j["version"] = 1;
  j["x_decode_step_s"] = r.decode_step_s;
  j["x_decode_threads"] = gen.decode_on_calling_thread() ? "calling" : "pool";
  return j;
}

// Written under a fresh name beside `path` (mkstemp: O_EXCL, never a name an attacker placed there),
// then renamed over it: a reader sees the old file or the whole new one.
void write_atomic(const std::string& path, const std::string& text) {
  check_output_file(path);
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string tmp = dir + "." + path.substr(slash == std::string::npos ? 0 : slash + 1) + ".partial-XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) throw std::runtime_error("cannot write stats beside " + path + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    done += size_t(w);
  }
  const bool ok = done == text.size() && fchmod(fd, 0644) == 0 && ::close(fd) == 0;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write " + path + ": " + why);
  }
}

int run(const Args& a) {
  meki::PackOptions po;
  po.mode = a.pack_mode == "mmap" ? meki::PackMode::kMmap : meki::PackMode::kPread;
  po.cache_bytes = size_t(a.cache_mib * (1 << 20));
  const std::string target = a.backend == "executorch" ? "executorch-xnnpack" : a.backend;
  // before load: XNNPACK takes its threadpool when the delegate is initialised
  if (a.single_thread) executorch::extension::threadpool::NoThreadPoolGuard::set_enabled(true);
  using L = meki::Generator::Lookup;
  meki::Generator gen(a.bundle, target, po,
                      a.lookup == "sync" ? L::kSync : a.lookup == "thread" ? L::kThread : L::kPrefetch,
                      a.single_thread ? meki::DecodeThreads::kCalling : a.decode_threads);
  const std::vector<int64_t> ids = meki::parse_token_ids(a.prompt_ids);
  const int64_t room = gen.manifest().backbone(target).max_seq_len - int64_t(ids.size());
  if (a.warmup > room)
    throw std::invalid_argument("--warmup " + std::to_string(a.warmup) + " with a " + std::to_string(ids.size()) +
                                "-token prompt exceeds the bundle's KV cache (" + std::to_string(room) +
                                " tokens left)");
  meki::SamplingConfig cfg;
  cfg.max_new_tokens = a.max_new_tokens;
  cfg.temperature = a.temperature;
  cfg.top_k = a.top_k;
  cfg.top_p = a.top_p;
  cfg.seed = a.seed;
  cfg.repeat_penalty = a.repeat_penalty;
  cfg.repeat_last_n = a.repeat_last_n;
  if (!a.ignore_eos && gen.manifest().has_tokenizer) cfg.stop_ids = gen.manifest().eos_token_ids;
  if (a.warmup > 0) {  // first-call costs (page faults, caches) out of the timed run; the KV cache
    meki::SamplingConfig w = cfg;  // is rewritten from position 0 by the next prefill
    w.max_new_tokens = a.warmup;
    w.stop_ids.clear();
    gen.generate(ids, w, nullptr);
  }
  std::function<void(int64_t)> echo;
  if (!a.quiet) echo = [](int64_t t) { std::printf("%lld ", static_cast<long long>(t)); std::fflush(stdout); };
  const meki::RunResult r = gen.generate(ids, cfg, echo);
  if (!a.quiet) std::printf("\n"), std::fflush(stdout);
  const auto j = stats_json(gen, ids.size(), r);
  if (!a.stats.empty()) write_atomic(a.stats, j.dump(2) + "\n");
  std::fprintf(stderr, "[%s] prefill %.1f tok/s, decode %.1f tok/s, exposed lookup %.2f%% of decode, peak RSS %lld MiB\n",
               gen.manifest().name.c_str(), j["prefill_tok_s"].get<double>(), j["decode_tok_s"].get<double>(),
               100.0 * j["exposed_lookup_fraction"].get<double>(), static_cast<long long>(r.mem_end.rss_peak >> 20));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return meki::tool_main(argc, argv, parse_args, run, kUsage); }
