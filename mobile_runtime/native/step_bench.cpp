// step_bench: one generation (prefill of a fixed prompt, then greedy decode steps) over any of the
// programs benchmarks/bench_overhead.py compares, timed per phase, with callgrind markers so that
// `valgrind --tool=callgrind --collect-atstart=no` counts instructions inside Method::execute only,
// one dump per phase. Benchmarks only: no pack, no sampling but argmax.
//
//   step_bench MODEL.pte PROMPT_LEN NEW_TOKENS [--prefill M] [--decode M] [--start-pos]
//              [--rows L,M] [--warmup N]
//     --start-pos: input_pos is [1] (the start position, ExecuTorch's LLM export) instead of [T]
//     --rows L,M:  the program takes meki_rows [1, T, L, M] (zeros: the backbone's compute does not
//                  depend on the row values; the lookup itself is the runner's, measured elsewhere)
//     --warmup N:  an untimed generation of N new tokens first (positions restart at 0); only its prefill
//                  is counted, dumped as "first_prefill": the cold call, which also pays XNNPACK's first
//                  reshape and workspace allocation (a one-time cost the later prompts do not pay)
//     --single-thread: no threadpool (XNNPACK and kernels run on the calling thread), so that the
//                  callgrind markers, which toggle collection for the calling thread only, see all work
//     --decode-threads pool|calling: calling loads only the decode method without the threadpool (the
//                  runners' --decode-threads, which decide `auto` from the manifest; a program whose
//                  decode is its prefill method gets it for both)
//   -> one JSON line {"prefill_s", "decode_s", "decode_steps", "tokens"}
// The same phases are marked for qemu-user's instruction count (qemu_insn_phases.c): a getpid with a
// magic first argument beside each callgrind request, outside the callgrind-counted span.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/extension/threadpool/threadpool_guard.h>

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_TOGGLE_COLLECT
#define CALLGRIND_DUMP_STATS_AT(x)
#endif

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::EValue;

namespace {

struct Options {
  std::string model, prefill = "prefill", decode = "decode";
  int prompt_len = 0, new_tokens = 0, warmup = 0, rows_l = 0, rows_m = 0;
  bool start_pos = false, single_thread = false, decode_calling = false;
};

struct Result {
  double prefill_s = 0, decode_s = 0;
  std::vector<int64_t> tokens;
};

// qemu_insn_phases.c's markers: 1 toggles counting, 2 / 3 close the prefill / decode phase.
enum PhaseMarker : long { kToggle = 1, kDumpPrefill = 2, kDumpDecode = 3 };
void phase_marker(PhaseMarker code) { syscall(SYS_getpid, 0x4d454b49L, static_cast<long>(code)); }

int64_t argmax(const executorch::aten::Tensor& t) {
  const int64_t V = t.size(t.dim() - 1);
  const float* p = t.const_data_ptr<float>() + (t.numel() - V);
  return int64_t(std::max_element(p, p + V) - p);
}

class Session {
 public:
  Session(Module& mod, const Options& o) : mod_(mod), o_(o) {}

  // T tokens at positions start..start+T-1 through `method`; the last position's argmax.
  // count: callgrind counts this execute; mark: so does qemu_insn_phases (the measured generation only)
  bool step(const std::string& method, const int64_t* toks, int T, int64_t start, bool count, int64_t* next,
            bool mark = true) {
    pos_.resize(T);
    for (int i = 0; i < T; ++i) pos_[i] = start + i;
    rows_.assign(static_cast<size_t>(T) * std::max(o_.rows_l, 1) * std::max(o_.rows_m, 1), 0.f);
    // the TensorPtrs must outlive execute (an EValue holds only the tensor, not its owner)
    auto t_tok = from_blob(const_cast<int64_t*>(toks), {1, T}, ScalarType::Long);
    auto t_pos = from_blob(pos_.data(), {o_.start_pos ? 1 : T}, ScalarType::Long);
    auto t_rows = from_blob(rows_.data(), {1, T, std::max(o_.rows_l, 1), std::max(o_.rows_m, 1)}, ScalarType::Float);
    std::vector<EValue> in = {t_tok, t_pos};
    if (o_.rows_l) in.push_back(t_rows);
    if (count && mark) phase_marker(kToggle);
    if (count) CALLGRIND_TOGGLE_COLLECT;
    auto out = mod_.execute(method, in);
    if (count) CALLGRIND_TOGGLE_COLLECT;
    if (count && mark) phase_marker(kToggle);
    if (!out.ok()) return false;
    *next = argmax((*out)[0].toTensor());
    return true;
  }

  // count: every call, one dump per phase; warmup: the prefill only (callgrind's "first_prefill"), no
  // qemu marker (qemu_insn_phases counts the measured generation's two phases)
  bool generate(int new_tokens, bool count, Result* r, bool warmup = false) {
    std::vector<int64_t> prompt(o_.prompt_len);
    for (int i = 0; i < o_.prompt_len; ++i) prompt[i] = (i * 7 + 3) % 64;
    int64_t next = 0;
    auto t0 = std::chrono::steady_clock::now();
    if (!step(o_.prefill, prompt.data(), o_.prompt_len, 0, count || warmup, &next, /*mark=*/!warmup)) return false;
    if (warmup) CALLGRIND_DUMP_STATS_AT("first_prefill");
    auto t1 = std::chrono::steady_clock::now();
    if (count) CALLGRIND_DUMP_STATS_AT("prefill");
    if (count) phase_marker(kDumpPrefill);
    r->tokens = {next};
    for (int s = 1; s < new_tokens; ++s) {
      int64_t tok = next;
      if (!step(o_.decode, &tok, 1, o_.prompt_len + s - 1, count, &next)) return false;
      r->tokens.push_back(next);
    }
    auto t2 = std::chrono::steady_clock::now();
    if (count) CALLGRIND_DUMP_STATS_AT("decode");
    if (count) phase_marker(kDumpDecode);
    r->prefill_s = std::chrono::duration<double>(t1 - t0).count();
    r->decode_s = std::chrono::duration<double>(t2 - t1).count();
    return true;
  }

 private:
  Module& mod_;
  const Options& o_;
  std::vector<int64_t> pos_;
  std::vector<float> rows_;
};

bool parse(int argc, char** argv, Options* o) {
  if (argc < 4) return false;
  o->model = argv[1];
  o->prompt_len = std::atoi(argv[2]);
  o->new_tokens = std::atoi(argv[3]);
  for (int i = 4; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--start-pos") {
      o->start_pos = true;
    } else if (a == "--single-thread") {
      o->single_thread = true;
    } else if (a == "--decode-threads" && has_value) {
      const std::string v = argv[++i];
      if (v != "pool" && v != "calling") return false;
      o->decode_calling = v == "calling";
    } else if (a == "--prefill" && has_value) {
      o->prefill = argv[++i];
    } else if (a == "--decode" && has_value) {
      o->decode = argv[++i];
    } else if (a == "--warmup" && has_value) {
      o->warmup = std::atoi(argv[++i]);
    } else if (a == "--rows" && has_value) {
      if (std::sscanf(argv[++i], "%d,%d", &o->rows_l, &o->rows_m) != 2) return false;
    } else {
      return false;
    }
  }
  return o->prompt_len > 0 && o->new_tokens > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, &o)) {
    std::fprintf(stderr, "usage: %s MODEL.pte PROMPT_LEN NEW_TOKENS [--prefill M] [--decode M] [--start-pos] "
                 "[--rows L,M] [--warmup N] [--single-thread] [--decode-threads pool|calling]\n", argv[0]);
    return 2;
  }
  // before load: XNNPACK takes its threadpool when the delegate is initialised
  if (o.single_thread) executorch::extension::threadpool::NoThreadPoolGuard::set_enabled(true);
  Module mod(o.model, Module::LoadMode::File, nullptr, nullptr, nullptr, /*share_memory_arenas=*/true);
  auto load = [&](const std::string& method, bool calling) {  // XNNPACK takes its threadpool at method load
    std::optional<executorch::extension::threadpool::NoThreadPoolGuard> guard;
    if (calling) guard.emplace();
    return mod.load_method(method);
  };
  // ExecuTorch's export decodes on its prefill method: one load, so the decode setting applies to both
  const bool prefill_calling = o.decode_calling && o.decode == o.prefill;
  if (load(o.prefill, prefill_calling) != executorch::runtime::Error::Ok ||
      load(o.decode, o.decode_calling) != executorch::runtime::Error::Ok) {
    std::fprintf(stderr, "error: cannot load %s/%s of %s\n", o.prefill.c_str(), o.decode.c_str(), o.model.c_str());
    return 4;
  }
  Session session(mod, o);
  Result r;
  if ((o.warmup > 0 && !session.generate(o.warmup, false, &r, /*warmup=*/true)) ||
      !session.generate(o.new_tokens, true, &r)) {
    std::fprintf(stderr, "error: execute failed\n");
    return 4;
  }
  std::printf("{\"prefill_s\": %.9f, \"decode_s\": %.9f, \"decode_steps\": %d, \"tokens\": [", r.prefill_s, r.decode_s,
              o.new_tokens - 1);
  for (size_t i = 0; i < r.tokens.size(); ++i) std::printf("%s%lld", i ? ", " : "", static_cast<long long>(r.tokens[i]));
  std::printf("]}\n");
  return 0;
}
