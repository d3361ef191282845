// runner_ab: the native runner's generation loop (meki::Generator, as in meki_runner) over two bundles in
// one process, their decode steps alternating, for a MeKi/dense ratio that this machine's drift cannot bias
// (benchmarks/bench_overhead.py's paired native figure). Each bundle generates on its own thread; its
// on_token hands a baton to the other and waits for it back, so exactly one loop runs at a time and the two
// take turns token by token (prefill included). A bundle's decode time is the sum of its turns: from getting
// the baton back to its next token (the row read, the backbone step, sampling, the next read's issue).
// --whole-runs: the baton passes once per generation instead (for programs that fit in the last-level cache,
// which alternating steps would run cold).
//
//   runner_ab BUNDLE_A BUNDLE_B --prompt-ids 3,1,4 [--max-new-tokens 32] [--rounds 10] [--warmup 4] [--whole-runs]
//
// One JSON line per round: {"first": "a"|"b", "a": {"prefill_s", "decode_s", "decode_steps", "tokens"}, "b": {...}};
// the bundle that starts alternates between rounds. Exit status as meki_runner's (2 usage or bundle, 3 pack, 4 ExecuTorch).
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "generator.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string bundles[2], prompt_ids;
  int64_t max_new_tokens = 32, rounds = 10, warmup = 4;
  bool whole_runs = false;
  meki::DecodeThreads decode_threads = meki::DecodeThreads::kAuto;
};

const char* kUsage =
    "usage: runner_ab BUNDLE_A BUNDLE_B --prompt-ids IDS [--max-new-tokens N] [--rounds R] [--warmup W] [--whole-runs]\n"
    "       [--decode-threads auto|pool|calling]   (as meki_runner's)\n";

Args parse_args(int argc, char** argv) {
  Args a;
  int given = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(k + " needs a value");
      return argv[++i];
    };
    if (k == "--prompt-ids") a.prompt_ids = val();
    else if (k == "--max-new-tokens") a.max_new_tokens = std::stoll(val());
    else if (k == "--rounds") a.rounds = std::stoll(val());
    else if (k == "--warmup") a.warmup = std::stoll(val());
    else if (k == "--whole-runs") a.whole_runs = true;
    else if (k == "--decode-threads") a.decode_threads = meki::parse_decode_threads(val());
    else if (k == "-h" || k == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
    else if (!k.empty() && k[0] == '-') throw std::invalid_argument("unknown option " + k);
    else if (given < 2) a.bundles[given++] = k;
    else throw std::invalid_argument("unexpected argument " + k);
  }
  if (given != 2 || a.prompt_ids.empty()) throw std::invalid_argument("two bundles and --prompt-ids are required");
  if (a.max_new_tokens < 2 || a.rounds < 1 || a.warmup < 0)
    throw std::invalid_argument("--max-new-tokens must be >= 2, --rounds >= 1, --warmup >= 0");
  return a;
}

// Two loops taking turns: wait_turn(i) blocks until it is i's turn (or the other loop has finished).
class Baton {
 public:
  explicit Baton(int first) : turn_(first) {}
  void wait_turn(int i) {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return turn_ == i || done_[1 - i]; });
  }
  void pass(int i, bool done = false) {  // i hands over to the other loop
    {
      std::lock_guard<std::mutex> lock(m_);
      turn_ = 1 - i;
      done_[i] = done_[i] || done;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int turn_;
  bool done_[2] = {false, false};
};

struct Turns {
  double prefill_s = 0, decode_s = 0;
  int64_t decode_steps = -1;  // tokens after the first (which comes from prefill)
  Clock::time_point resumed;
};

nlohmann::ordered_json round(meki::Generator* gens[2], const std::vector<int64_t>& ids,
                             const meki::SamplingConfig& cfg, int first, bool whole_runs) {
  Baton baton(first);
  Turns turns[2];
  std::vector<int64_t> tokens[2];
  std::exception_ptr errors[2];
  auto loop = [&](int i) {
    try {
      baton.wait_turn(i);
      turns[i].resumed = Clock::now();
      tokens[i] = gens[i]->generate(ids, cfg, [&, i](int64_t) {
        Turns& t = turns[i];
        const double busy = std::chrono::duration<double>(Clock::now() - t.resumed).count();
        (t.decode_steps < 0 ? t.prefill_s : t.decode_s) += busy;
        t.decode_steps += 1;
        if (!whole_runs) {
          baton.pass(i);
          baton.wait_turn(i);
        }
        t.resumed = Clock::now();
      }).tokens;
    } catch (...) {
      errors[i] = std::current_exception();
    }
    baton.pass(i, true);
  };
  std::thread a(loop, 0), b(loop, 1);
  a.join();
  b.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  nlohmann::ordered_json j{{"first", first == 0 ? "a" : "b"}};
  for (int i = 0; i < 2; ++i)
    j[i == 0 ? "a" : "b"] = {{"prefill_s", turns[i].prefill_s}, {"decode_s", turns[i].decode_s},
                             {"decode_steps", turns[i].decode_steps}, {"tokens", tokens[i]}};
  return j;
}

int run(const Args& a) {
  meki::PackOptions po;
  using L = meki::Generator::Lookup;
  meki::Generator ga(a.bundles[0], "executorch-xnnpack", po, L::kPrefetch, a.decode_threads),
      gb(a.bundles[1], "executorch-xnnpack", po, L::kPrefetch, a.decode_threads);
  meki::Generator* gens[2] = {&ga, &gb};
  const std::vector<int64_t> ids = meki::parse_token_ids(a.prompt_ids);
  meki::SamplingConfig cfg;  // greedy, no stop token: every round decodes max_new_tokens
  cfg.max_new_tokens = a.max_new_tokens;
  if (a.warmup > 0) {  // first-call costs out of the timed rounds, as meki_runner --warmup
    meki::SamplingConfig w = cfg;
    w.max_new_tokens = a.warmup;
    for (auto* g : gens) g->generate(ids, w, nullptr);
  }
  for (int64_t r = 0; r < a.rounds; ++r) std::printf("%s\n", round(gens, ids, cfg, int(r % 2), a.whole_runs).dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return meki::tool_main(argc, argv, parse_args, run, kUsage); }
