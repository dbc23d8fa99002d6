// Shared plumbing of the fused layer-wise CPU kernels: a strided view of one B×C×H×W feature per
// layer, so the kernels read channels_last and sliced inputs in place instead of copying them.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace hyperkd {

struct FeatureView {
  void* data;
  int64_t C, H, W;
  int64_t sb, sc, sh, sw;
  int64_t HW() const { return H * W; }
  // Each channel's H×W plane is one contiguous run (NCHW-contiguous or a channel slice of it).
  bool plane_contiguous() const { return sw == 1 && sh == W; }
  // One sample's C·H·W elements are one contiguous run in NCHW order.
  bool sample_contiguous() const { return plane_contiguous() && sc == H * W; }
};

inline FeatureView feature_view(const at::Tensor& t) {
  return {t.data_ptr(), t.size(1), t.size(2), t.size(3),
          t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline std::vector<FeatureView> feature_views(at::TensorList ts) {
  std::vector<FeatureView> views;
  views.reserve(ts.size());
  for (const auto& t : ts) views.push_back(feature_view(t));
  return views;
}

// One uninitialised gradient per feature, with its strides (channels_last stays channels_last).
inline std::vector<at::Tensor> empty_like_each(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(at::empty_like(t));
  return out;
}

// A buffer of at least n elements owned by the calling thread and reused across rows: a malloc
// and free per (layer, sample) row add up over the B·M rows of a call. Slots give one kernel
// several such buffers of one type.
template <typename T, int Slot = 0>
inline T* thread_scratch(int64_t n) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// dst[0:n] = src[0:n] with non-temporal stores. A forward-gradient op writes a gradient as large
// as the student's features, once, to memory nothing has touched yet: a normal store first reads
// each line for ownership, which doubles the write's memory traffic (the AT loss's gradient pass
// sat on its stores). These go to memory around the caches; call stream_fence() before another
// thread reads dst (parallel_for_rows does, at the end of each thread's rows).
template <typename T>
inline void stream_store(T* dst, const T* src, int64_t n) {
  auto* d = reinterpret_cast<char*>(dst);
  auto* s = reinterpret_cast<const char*>(src);
  size_t bytes = size_t(n) * sizeof(T);
#if defined(__AVX__)
  const size_t head = std::min(bytes, (32 - reinterpret_cast<uintptr_t>(d) % 32) % 32);
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  for (; bytes >= 32; d += 32, s += 32, bytes -= 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
#endif
  std::memcpy(d, s, bytes);
}

// Orders the non-temporal stores before what follows.
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// Writes dst[0:n] through a small per-thread buffer and stream_store: fill(buf, i0, k) writes
// elements i0 … i0+k−1 of the run into buf[0:k], so that the gradient's loop stays a vectorised
// loop into cache and only the copy out streams. Used where it measured faster: AT's gradient
// planes. (AB and CwD, whose passes do more arithmetic per element, did not gain; FitNets gained
// on ResNet-20 and lost on VGG-19-bn, whose late planes are a few elements each.)
template <typename T, typename Fill>
inline void write_streamed(T* dst, int64_t n, Fill&& fill) {
  constexpr int64_t kChunk = 1024;
  constexpr int kStreamSlot = 15;  // apart from the kernels' own thread_scratch slots
  T* buf = thread_scratch<T, kStreamSlot>(std::min(n, kChunk));
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t k = std::min(kChunk, n - i0);
    fill(buf, i0, k);
    stream_store(dst + i0, buf, k);
  }
}

// Runs fn(m, b) for every (layer m, sample b) row in parallel. Rows are numbered sample-major:
// at::parallel_for hands each thread one contiguous range, and layers differ in size (ResNet-20's
// first rows are 4x its last), so layer-major ranges left one thread with most of the work. Rows
// may write through write_streamed: each thread fences its streamed stores before it finishes.
template <typename Fn>
inline void parallel_for_rows(int64_t M, int64_t B, Fn&& fn) {
  at::parallel_for(0, M * B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r % M, r / M);
    stream_fence();
  });
}

// Checks shared by every layer-list op: same batch, dtype and device, 4-D, non-empty.
void check_feature_list(at::TensorList feats, const char* name);

// λ_m of the fused losses: one weight per layer in the accumulation dtype.
inline void check_lambdas(const at::Tensor& lambdas, int64_t M, at::ScalarType acc) {
  TORCH_CHECK(lambdas.dim() == 1 && lambdas.size(0) == M && lambdas.scalar_type() == acc,
              "lambdas: expected ", M, " weights of dtype ", acc);
}

// The per-layer outputs of the fused losses from an M×B table of per-sample row values:
// L_m = scale(m) · Σ_b rows[m, b] and (into `terms`, unless null) the weighted term λ_m L_m;
// returns Σ_m λ_m L_m.
template <typename acc_t, typename Scale>
inline acc_t layer_terms(const acc_t* rows, int64_t M, int64_t B, const acc_t* lam, Scale&& scale,
                         acc_t* losses, acc_t* terms = nullptr) {
  acc_t total = 0;
  for (int64_t m = 0; m < M; ++m) {
    acc_t sum = 0;
    for (int64_t b = 0; b < B; ++b) sum += rows[m * B + b];
    losses[m] = sum * scale(m);
    const acc_t term = lam[m] * losses[m];
    if (terms) terms[m] = term;
    total += term;
  }
  return total;
}

// The data pointers of per-layer tensors, as the kernels of csrc/cpu/gram.h take them.
template <typename P>
std::vector<P> pointers(const std::vector<at::Tensor>& ts) {
  std::vector<P> out;
  for (const auto& t : ts) out.push_back(t.data_ptr<std::remove_cv_t<std::remove_pointer_t<P>>>());
  return out;
}

// The row widths D_m of per-layer B×D_m matrices.
inline std::vector<int64_t> widths(const std::vector<at::Tensor>& rows) {
  std::vector<int64_t> out;
  for (const auto& r : rows) out.push_back(r.size(1));
  return out;
}

// The accumulation type of a feature dtype: double for double, float otherwise.
inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace hyperkd
