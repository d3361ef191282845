// ExecuTorch kernels for the two `llama` ops our exported attention uses (pipeline/export/
// custom_attention.py): llama::update_cache.out and llama::custom_sdpa.out, fp32, with the schemas
// and semantics of ExecuTorch's extension/llm/custom_ops (op_update_cache.cpp, op_sdpa.cpp).
//
// Why here: the executorch wheel ships those kernels only inside its Python AOT library
// (libcustom_ops_aot_lib.so, linked against libtorch and the CPython extension), which a
// standalone runner cannot load. An ExecuTorch install built with EXECUTORCH_BUILD_KERNELS_LLM
// (Android) has its own `custom_ops` library; CMakeLists.txt links that one instead of this file.
//
// Layouts (contiguous): value [B, T, H, D] -> cache [B, S, H, D] at rows start_pos..start_pos+T-1.
// custom_sdpa: q [B, T, Hq, D], k/v [B, S, Hkv, D] (Hq a multiple of Hkv: GQA without copies);
// query t attends keys 0..start_pos+t (causal) or 0..start_pos+T-1 (not causal); out [B, T, Hq, D].
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

namespace meki_llama {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

Tensor& update_cache_out(KernelRuntimeContext& ctx, const Tensor& value, Tensor& cache, int64_t start_pos,
                         Tensor& out) {
  (void)out;  // the op's result is the mutated cache; `out` is a placeholder in the schema
  ET_KERNEL_CHECK_MSG(ctx, value.dim() == 4 && cache.dim() == 4, InvalidArgument, cache, "update_cache: 4-D tensors");
  const int64_t batch = value.size(0), seq = value.size(1), cap = cache.size(1);
  ET_KERNEL_CHECK_MSG(ctx, value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                           value.size(3) == cache.size(3) && value.element_size() == cache.element_size(),
                      InvalidArgument, cache, "update_cache: value and cache shapes disagree");
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + seq <= cap, InvalidArgument, cache,
                      "update_cache: start_pos %" PRId64 " + %" PRId64 " tokens > cache size %" PRId64, start_pos,
                      seq, cap);
  const size_t row = static_cast<size_t>(value.size(2) * value.size(3)) * value.element_size();
  const auto* src = static_cast<const char*>(value.const_data_ptr());
  auto* dst = static_cast<char*>(cache.mutable_data_ptr());
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(dst + (b * cap + start_pos) * row, src + b * seq * row, seq * row);
  }
  return cache;
}

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// One query row against keys [0, n): softmax(scale * q.k) . v, into o (length D).
void attend_row(const float* q, const float* k, const float* v, int64_t n, int64_t kv_stride, int64_t dim,
                float scale, float* scores, float* o) {
  float peak = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = scale * dot(q, k + j * kv_stride, dim);
    peak = std::max(peak, scores[j]);
  }
  float total = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - peak);
    total += scores[j];
  }
  std::fill(o, o + dim, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const float p = scores[j] / total;
    const float* vj = v + j * kv_stride;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) o[d] += p * vj[d];
  }
}

}  // namespace

Tensor& custom_sdpa_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        int64_t start_pos, const std::optional<Tensor>& attn_mask, double dropout_p, bool is_causal,
                        std::optional<double> scale, Tensor& out) {
  (void)dropout_p;
  ET_KERNEL_CHECK_MSG(ctx, !attn_mask.has_value(), NotSupported, out,
                      "custom_sdpa: attn_mask is not supported by the meki runner's kernel");
  ET_KERNEL_CHECK_MSG(ctx, q.scalar_type() == ScalarType::Float && k.scalar_type() == ScalarType::Float &&
                           v.scalar_type() == ScalarType::Float, NotSupported, out, "custom_sdpa: fp32 only");
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && k.dim() == 4 && v.dim() == 4, InvalidArgument, out, "custom_sdpa: 4-D");
  const int64_t batch = q.size(0), seq = q.size(1), hq = q.size(2), dim = q.size(3);
  const int64_t cap = k.size(1), hkv = k.size(2);
  ET_KERNEL_CHECK_MSG(ctx, hkv > 0 && hq % hkv == 0 && k.size(3) == dim && v.size(3) == dim, InvalidArgument, out,
                      "custom_sdpa: head counts/dims disagree");
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + seq <= cap, InvalidArgument, out,
                      "custom_sdpa: start_pos + seq_len exceeds the cache");
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, out);
  const float sc = scale.has_value() ? static_cast<float>(*scale) : 1.f / std::sqrt(static_cast<float>(dim));
  const float* qd = q.const_data_ptr<float>();
  const float* kd = k.const_data_ptr<float>();
  const float* vd = v.const_data_ptr<float>();
  float* od = out.mutable_data_ptr<float>();
  const int64_t group = hq / hkv, kv_stride = hkv * dim;
  const int64_t keys_max = start_pos + seq;
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<float> scores(keys_max);
    for (int64_t i = begin; i < end; ++i) {  // i = (b * seq + t) * hq + h: one query row
      const int64_t h = i % hq, t = (i / hq) % seq, b = i / (hq * seq);
      const int64_t n = is_causal ? start_pos + t + 1 : keys_max;
      const int64_t kv_off = (b * cap) * kv_stride + (h / group) * dim;
      attend_row(qd + i * dim, kd + kv_off, vd + kv_off, n, kv_stride, dim, sc, scores.data(), od + i * dim);
    }
  };
  const int64_t rows = batch * seq * hq;
  if (seq == 1) {  // decode: a few rows, not worth waking the threadpool
    work(0, rows);
  } else {
    executorch::extension::parallel_for(0, rows, std::max<int64_t>(1, rows / 8), [&](int64_t b, int64_t e) {
      work(b, e);
    });
  }
  return out;
}

}  // namespace meki_llama

EXECUTORCH_LIBRARY(llama, "update_cache.out", meki_llama::update_cache_out);
EXECUTORCH_LIBRARY(llama, "custom_sdpa.out", meki_llama::custom_sdpa_out);
