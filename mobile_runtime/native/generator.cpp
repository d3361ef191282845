// Generation loop over an ExecuTorch program; see generator.h.
#include "generator.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/extension/threadpool/threadpool_guard.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <optional>
#include <sstream>

namespace meki {
namespace {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::Error;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string hex_error(Error e) {
  std::ostringstream o;
  o << "ExecuTorch error 0x" << std::hex << int(e);
  return o.str();
}

}  // namespace

MemorySnapshot memory_snapshot(const MemoryPack* pack) {
  MemorySnapshot s;
  std::ifstream in("/proc/self/status");  // absent off Linux/Android: zeros
  std::string key;
  int64_t kb = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    if (!(ls >> key >> kb)) continue;
    if (key == "VmRSS:") s.rss = kb * 1024;
    else if (key == "VmHWM:") s.rss_peak = kb * 1024;
    else if (key == "RssAnon:") s.rss_anon = kb * 1024;
    else if (key == "RssFile:") s.rss_file = kb * 1024;
  }
  s.pack_resident = pack != nullptr ? pack->resident_bytes() : 0;
  return s;
}

// CTRL's repetition penalty as llama.cpp applies it: each distinct recent token's logit is divided by
// the penalty when positive and multiplied by it when negative.
static void penalize(std::vector<double>& l, const std::vector<int64_t>& recent, const SamplingConfig& cfg) {
  const size_t n = std::min<size_t>(recent.size(), size_t(std::max<int64_t>(cfg.repeat_last_n, 0)));
  std::vector<int64_t> ids(recent.end() - n, recent.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int64_t id : ids) {
    if (id < 0 || id >= int64_t(l.size())) continue;
    double& x = l[size_t(id)];
    x = std::clamp(x > 0 ? x / cfg.repeat_penalty : x * cfg.repeat_penalty, -DBL_MAX, DBL_MAX);  // a tiny penalty
  }
}

int64_t sample(const float* logits, int64_t V, const SamplingConfig& cfg, std::mt19937_64& rng,
               const std::vector<int64_t>& recent) {
  const bool penalty = cfg.repeat_penalty != 1.0 && cfg.repeat_last_n > 0 && !recent.empty();
  // plain greedy reads the logits in place: no [V] copy per step on the hot path
  if (cfg.temperature == 0.0 && !penalty) return std::max_element(logits, logits + V) - logits;
  std::vector<double> l(logits, logits + V);
  if (penalty) penalize(l, recent, cfg);
  const int64_t best = std::max_element(l.begin(), l.end()) - l.begin();
  if (cfg.temperature == 0.0) return best;
  for (double& x : l)
    if (!std::isfinite(x /= cfg.temperature)) return best;  // a temperature so small it overflows: the limit, greedy
  if (cfg.top_k > 0 && cfg.top_k < V) {
    std::vector<double> tmp(l);
    std::nth_element(tmp.begin(), tmp.begin() + (V - cfg.top_k), tmp.end());
    const double kth = tmp[V - cfg.top_k];
    for (double& x : l)
      if (x < kth) x = -INFINITY;
  }
  const double mx = *std::max_element(l.begin(), l.end());
  double sum = 0;
  for (double& x : l) sum += (x = std::exp(x - mx));
  for (double& x : l) x /= sum;
  if (cfg.top_p < 1.0) {  // keep the smallest top set reaching top_p (the top token always)
    std::vector<int64_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return l[a] > l[b]; });
    double before = 0, kept = 0;  // probability mass of the tokens ranked above this one
    for (int64_t i : order) {
      const double p = l[i];
      if (before < cfg.top_p) kept += p;
      else l[i] = 0;
      before += p;
    }
    for (double& x : l) x /= kept;
  }
  std::discrete_distribution<int64_t> dist(l.begin(), l.end());
  return dist(rng);
}

bool decode_on_calling_thread(DecodeThreads t, const Manifest& m) {
  if (t != DecodeThreads::kAuto) return t == DecodeThreads::kCalling;
  // widths unknown: the pool; each below the bound first, so the product cannot overflow
  return m.dim > 0 && m.ffn_dim > 0 && m.dim < kPooledDecodeMacs && m.ffn_dim < kPooledDecodeMacs &&
         m.dim * m.ffn_dim < kPooledDecodeMacs;
}

DecodeThreads parse_decode_threads(const std::string& s) {
  if (s == "auto") return DecodeThreads::kAuto;
  if (s == "pool") return DecodeThreads::kPool;
  if (s == "calling") return DecodeThreads::kCalling;
  throw std::invalid_argument("--decode-threads must be auto, pool or calling, got " + s);
}

Generator::Generator(const std::string& bundle, const std::string& target, const PackOptions& pack_opts,
                     Lookup lookup, DecodeThreads decode_threads)
    : manifest_(load_manifest(bundle)), lookup_(lookup) {
  check_bundle_files(bundle, manifest_);
  backbone_ = &manifest_.backbone(target);
  if (manifest_.has_pack) {
    PackOptions o = pack_opts;
    o.expected_fingerprint = manifest_.fingerprint;
    pack_ = MemoryPack::open(bundle + "/" + manifest_.pack.file, o);
    const auto& h = pack_->header();  // the header must say what the manifest says (bundle.pack_mismatch)
    check_pack_header(manifest_, dtype_name(h.dtype), layout_name(h.layout), h.vocab_size, h.num_layers, h.d_mem);
    if (!backbone_->takes_meki_rows()) throw BundleError("bundle has a memory pack but its decode takes no meki_rows");
    if (lookup != Lookup::kSync) prefetcher_ = std::make_unique<Prefetcher>(pack_.get());
    rows_.resize(pack_->row_floats());
  }
  // share_memory_arenas: prefill and decode must see one KV cache (share_mutable_buffers export)
  module_ = std::make_unique<Module>(bundle + "/" + backbone_->file, Module::LoadMode::File, nullptr, nullptr,
                                     nullptr, /*share_memory_arenas=*/true);
  // Load both methods before the first execute: loading a method re-initialises the mutable
  // buffers it owns, so a lazy load of decode after prefill would zero the KV cache. XNNPACK takes
  // its threadpool when a method's delegates are initialised, so decode's is chosen here.
  decode_calling_ = meki::decode_on_calling_thread(decode_threads, manifest_);
  for (const auto* m : {&backbone_->prefill, &backbone_->decode}) {
    std::optional<executorch::extension::threadpool::NoThreadPoolGuard> calling;  // thread-local, this load only
    if (m == &backbone_->decode && decode_calling_) calling.emplace();
    const Error e = module_->load_method(m->entry);
    if (e != Error::Ok) throw RuntimeError("cannot load method '" + m->entry + "' of " + backbone_->file + ": " + hex_error(e));
  }
  tok_t_ = from_blob(&tok_, {1, 1}, ScalarType::Long);
  pos_t_ = from_blob(&pos_, {1}, ScalarType::Long);
  decode_in_ = {tok_t_, pos_t_};
  if (pack_) {
    const auto& h = pack_->header();
    rows_t_ = from_blob(rows_.data(), {1, 1, int(h.num_layers), int(h.d_mem)}, ScalarType::Float);
    decode_in_.push_back(rows_t_);
  }
}

Generator::~Generator() {
  prefetcher_.reset();  // join the worker before the pack it reads goes away
}

void Generator::run_method(const std::string& entry, const std::vector<executorch::runtime::EValue>& in) {
  auto out = module_->execute(entry, in);
  if (!out.ok()) throw RuntimeError("method '" + entry + "' failed: " + hex_error(out.error()));
  const auto& t = (*out)[0].toTensor();  // logits [1, V] (or [1, T, V]: the last row is taken)
  const int64_t V = t.size(t.dim() - 1);
  const float* p = t.const_data_ptr<float>() + (t.numel() - V);
  logits_.assign(p, p + V);
}

void Generator::prefill(const std::vector<int64_t>& prompt, RunResult& r) {
  const int64_t step = backbone_->prefill_len, n = int64_t(prompt.size());
  std::vector<int64_t> pos;
  std::vector<float> rows;
  for (int64_t start = 0; start < n; start += step) {
    const int64_t T = std::min(step, n - start);  // dynamic prefill: the last chunk may be shorter
    std::vector<int64_t> chunk(prompt.begin() + start, prompt.begin() + start + T);
    pos.resize(T);
    std::iota(pos.begin(), pos.end(), start);
    // the TensorPtrs own the tensor objects the EValues point at: keep them alive over the call
    std::vector<executorch::extension::TensorPtr> keep = {from_blob(chunk.data(), {1, int(T)}, ScalarType::Long),
                                                          from_blob(pos.data(), {int(T)}, ScalarType::Long)};
    if (pack_) {
      const auto t0 = Clock::now();
      rows.resize(T * pack_->row_floats());
      pack_->lookup(chunk.data(), size_t(T), rows.data());
      r.lookup_total_s += since(t0);
      const auto& h = pack_->header();
      keep.push_back(from_blob(rows.data(), {1, int(T), int(h.num_layers), int(h.d_mem)}, ScalarType::Float));
    }
    const std::vector<executorch::runtime::EValue> in(keep.begin(), keep.end());
    run_method(backbone_->prefill.entry, in);
  }
}

void Generator::decode_one(int64_t token, int64_t pos, RunResult& r) {
  tok_ = token;
  pos_ = pos;
  const auto t0 = Clock::now();
  run_method(backbone_->decode.entry, decode_in_);
  r.decode_step_s.push_back(since(t0));
}

void Generator::issue(int64_t token) {
  issued_ = prefetcher_ && (lookup_ == Lookup::kThread || !pack_->cached(token));
  if (issued_) prefetcher_->submit(token);
}

double Generator::fetch_rows(int64_t token) {
  if (issued_) return prefetcher_->collect(rows_.data());  // issued when token was sampled
  const auto t0 = Clock::now();
  pack_->lookup(&token, 1, rows_.data());
  return since(t0);
}

void Generator::decode_n(int64_t first, int64_t pos, const SamplingConfig& cfg, std::mt19937_64& rng,
                         const std::function<void(int64_t)>& on_token, RunResult& r) {
  int64_t token = first;
  r.tokens = {first};
  history_.push_back(first);  // after the prompt (generate): what the repetition penalty looks back on
  if (pack_) issue(token);
  for (;;) {
    if (on_token) on_token(token);  // bookkeeping overlaps the pack read issued above
    const bool eos = std::find(cfg.stop_ids.begin(), cfg.stop_ids.end(), token) != cfg.stop_ids.end();
    const bool full = int64_t(r.tokens.size()) >= cfg.max_new_tokens;
    if (eos || full || pos >= backbone_->max_seq_len) {
      r.stop_reason = eos ? "eos" : full ? "max_tokens" : "max_seq_len";
      if (issued_) prefetcher_->collect(rows_.data());  // drain the unused last read
      return;
    }
    if (pack_) r.exposed_lookup_s.push_back(fetch_rows(token));
    decode_one(token, pos, r);
    token = sample(logits_.data(), int64_t(logits_.size()), cfg, rng, history_);
    pos += 1;
    r.tokens.push_back(token);
    history_.push_back(token);
    if (pack_) issue(token);
  }
}

int run_reporting_errors(const std::function<int()>& body) {
  try {
    return body();
  } catch (const PackError& e) {
    std::fprintf(stderr, "error: memory pack (%s): %s\n", e.check(), e.what());
    return 3;
  } catch (const BundleError& e) {
    std::fprintf(stderr, "error: bundle (%s): %s\n", e.check(), e.what());
    return 2;
  } catch (const RuntimeError& e) {
    std::fprintf(stderr, "error: executorch: %s\n", e.what());
    return 4;
  } catch (const std::exception& e) {  // invalid_argument and the like
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}

int64_t parse_int_flag(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || v < lo || v > hi)
    throw std::invalid_argument(flag + " '" + text + "': expected an integer in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "]");
  return v;
}

double parse_number_flag(const std::string& flag, const std::string& text, double lo, double hi, bool above_lo) {
  size_t used = 0;
  double v = std::nan("");
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || !std::isfinite(v) || v < lo || (above_lo && v == lo) || v > hi) {
    char range[96];
    std::snprintf(range, sizeof(range), "%s%g, %g]", above_lo ? "(" : "[", lo, hi);
    throw std::invalid_argument(flag + " '" + text + "': expected a finite number in " + range);
  }
  return v;
}

uint64_t parse_seed_flag(const std::string& flag, const std::string& text) {
  size_t used = 0;
  unsigned long long v = 0;
  const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  try {
    if (digits) v = std::stoull(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (!digits || used != text.size())
    throw std::invalid_argument(flag + " '" + text + "': expected an integer in [0, 2^64)");
  return v;
}

std::vector<int64_t> parse_token_ids(const std::string& s) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(',', start);
    const std::string item = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < 0)
      throw std::invalid_argument("bad token id '" + item + "' in --prompt-ids (comma-separated integers >= 0)");
    ids.push_back(v);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return ids;
}

RunResult Generator::generate(const std::vector<int64_t>& prompt, const SamplingConfig& cfg,
                              const std::function<void(int64_t)>& on_token) {
  if (prompt.empty()) throw std::invalid_argument("empty prompt");
  if (cfg.max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be >= 1");
  if (manifest_.vocab_size > 0)
    for (const int64_t id : prompt)
      if (id >= manifest_.vocab_size)
        throw std::invalid_argument("prompt token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                    std::to_string(manifest_.vocab_size) + ")");
  // compared without the sum: a huge max_new_tokens must not overflow past the check
  if (cfg.max_new_tokens > backbone_->max_seq_len - int64_t(prompt.size()))
    throw std::invalid_argument("prompt (" + std::to_string(prompt.size()) + ") + max_new_tokens (" +
                                std::to_string(cfg.max_new_tokens) + ") exceeds the bundle's KV cache (" +
                                std::to_string(backbone_->max_seq_len) + ")");
  RunResult r;
  std::mt19937_64 rng(cfg.seed);
  r.mem_start = memory_snapshot(pack_.get());
  const auto t0 = Clock::now();
  prefill(prompt, r);
  r.prefill_s = since(t0);
  history_ = prompt;
  const int64_t first = sample(logits_.data(), int64_t(logits_.size()), cfg, rng, history_);
  r.ttft_s = since(t0);
  const auto t1 = Clock::now();
  decode_n(first, int64_t(prompt.size()), cfg, rng, on_token, r);
  r.decode_s = since(t1);
  r.mem_end = memory_snapshot(pack_.get());
  return r;
}

}  // namespace meki
