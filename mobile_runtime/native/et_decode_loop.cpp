// et_decode_loop: the barest ExecuTorch Module decode loop (no pack, no prefetch, no stats but a
// timer) over a dense program with prefill/decode methods. A floor for benchmarks only.
//
//   et_decode_loop MODEL.pte PROMPT_LEN STEPS [PREFILL_METHOD DECODE_METHOD]
//     -> one JSON line {"decode_tok_s": ..., "tokens": [...]}; methods default to prefill, decode
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::Module;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.pte PROMPT_LEN STEPS [PREFILL_METHOD DECODE_METHOD]\n", argv[0]);
    return 2;
  }
  const int T = std::atoi(argv[2]), steps = std::atoi(argv[3]);
  const std::string prefill = argc > 5 ? argv[4] : "prefill", decode = argc > 5 ? argv[5] : "decode";
  Module mod(argv[1], Module::LoadMode::File, nullptr, nullptr, nullptr, /*share_memory_arenas=*/true);
  if (mod.load_method(prefill) != executorch::runtime::Error::Ok ||
      mod.load_method(decode) != executorch::runtime::Error::Ok) {
    std::fprintf(stderr, "error: cannot load %s/%s of %s\n", prefill.c_str(), decode.c_str(), argv[1]);
    return 4;
  }
  std::vector<int64_t> tok(T), pos(T);
  for (int i = 0; i < T; ++i) tok[i] = (i * 7 + 3) % 64, pos[i] = i;
  auto out = mod.execute(prefill, {from_blob(tok.data(), {1, T}, ScalarType::Long),
                                     from_blob(pos.data(), {T}, ScalarType::Long)});
  if (!out.ok()) return 4;
  auto argmax = [](const executorch::aten::Tensor& t) {
    const int64_t V = t.size(t.dim() - 1);
    const float* p = t.const_data_ptr<float>() + (t.numel() - V);
    return int64_t(std::max_element(p, p + V) - p);
  };
  int64_t next = argmax((*out)[0].toTensor()), p1 = T;
  std::vector<int64_t> toks = {next};
  auto t_tok = from_blob(&next, {1, 1}, ScalarType::Long);
  auto t_pos = from_blob(&p1, {1}, ScalarType::Long);
  const std::vector<executorch::runtime::EValue> in = {t_tok, t_pos};
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s, ++p1) {
    auto o = mod.execute(decode, in);
    if (!o.ok()) return 4;
    next = argmax((*o)[0].toTensor());
    toks.push_back(next);
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"decode_tok_s\": %.6f, \"decode_s\": %.6f, \"tokens\": [", steps / dt, dt);
  for (size_t i = 0; i < toks.size(); ++i) std::printf("%s%lld", i ? ", " : "", static_cast<long long>(toks[i]));
  std::printf("]}\n");
  return 0;
}
