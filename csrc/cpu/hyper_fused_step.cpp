// The fused optimizer step of the hypernetwork's output layer on the CPU. W's gradient is the
// rank-B_γ product dθᵀ·z (LayerKD-HN Eq. 2); each task forms it for a few rows of W at a time and
// applies SGD(+momentum), Adam or AdamW in place, so no P×d gradient is ever allocated. W and the
// optimizer state may be bf16, written back with stochastic rounding so that small updates are
// not lost on average. Given the next step's codes z_next, the same pass over W also generates the
// next step's W_{t+1}·z_next from each freshly written row (one pass over W per training step
// instead of two: the update's and the next generation's), into `next_out` when given: that may be
// dθ's own buffer, since each row's dθ is read before the same row's next value is written, so the
// carried generation needs no memory (and no freshly faulted pages) of its own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "hyper_dot.h"

namespace hyperkd {
namespace {

enum Algorithm { kSGD = 0, kAdam = 1, kAdamW = 2 };

// splitmix64 of (seed, element index): a counter-based stream, so the rounding noise does not
// depend on how the rows are split across threads.
inline uint32_t noise16(uint64_t seed, uint64_t index) {
  uint64_t x = seed ^ (index * 0x9E3779B97F4A7C15ull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(x ^ (x >> 31)) & 0xFFFFu;
}

// fp32 → bf16 rounding up with probability equal to the discarded fraction (E[round(x)] = x).
inline at::BFloat16 stochastic_bf16(float x, uint64_t seed, uint64_t index) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7F800000u) != 0x7F800000u) bits += noise16(seed, index);  // leave inf/nan alone
  return at::BFloat16(static_cast<uint16_t>(bits >> 16), at::BFloat16::from_bits());
}

// Element access for fp32 and bf16 storage; bf16 is written with stochastic rounding. Both are
// template parameters so that the fp32 loops stay branch-free and vectorise.
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const at::BFloat16* p, int64_t i) { return static_cast<float>(p[i]); }
inline void store(float* p, int64_t i, float v, uint64_t) { p[i] = v; }
inline void store(at::BFloat16* p, int64_t i, float v, uint64_t seed) {
  p[i] = stochastic_bf16(v, seed, static_cast<uint64_t>(i));
}

struct StepArgs {
  int64_t P, d, B;
  const float* dtheta;
  const float* z;
  int64_t B_next;       // codes in z_next (0: no generation)
  const float* z_next;  // B_next×d
  float* next;          // B_next×P: W_{t+1}·z_next
  float lr, beta1, beta2, eps, wd, bc1, bc2_sqrt;
  uint64_t seed;
};

// Row p of W: form its row of dW = dθᵀ·z in g (a d-vector), then update it in place.
template <int ALGO, bool MOMENTUM, typename w_t, typename s_t>
inline void update_row(const StepArgs& a, w_t* w, s_t* m, s_t* v, int64_t p, float* g) {
  const uint64_t seed_w = a.seed, seed_m = a.seed ^ 0x1111u, seed_v = a.seed ^ 0x2222u;
  std::fill(g, g + a.d, 0.0f);
  for (int64_t b = 0; b < a.B; ++b) {
    const float c = a.dtheta[b * a.P + p];
    const float* zb = a.z + b * a.d;
    for (int64_t k = 0; k < a.d; ++k) g[k] += c * zb[k];
  }
  const int64_t row = p * a.d;
  for (int64_t k = 0; k < a.d; ++k) {
    const int64_t i = row + k;
    float wi = load(w, i), gi = g[k];
    if constexpr (ALGO == kSGD) {
      gi += a.wd * wi;
      if constexpr (MOMENTUM) {
        gi = a.beta1 * load(m, i) + gi;  // zero-initialised buffer: the first step stores g itself
        store(m, i, gi, seed_m);
      }
      wi -= a.lr * gi;
    } else {
      if constexpr (ALGO == kAdam) gi += a.wd * wi;
      else wi *= 1.0f - a.lr * a.wd;
      float mi = load(m, i), vi = load(v, i);
      mi += (1.0f - a.beta1) * (gi - mi);
      vi = a.beta2 * vi + (1.0f - a.beta2) * gi * gi;
      store(m, i, mi, seed_m);
      store(v, i, vi, seed_v);
      wi -= (a.lr / a.bc1) * mi / (std::sqrt(vi) / a.bc2_sqrt + a.eps);
    }
    store(w, i, wi, seed_w);
  }
}

// Rows [begin, end) of W: update each in place, then (chained) generate the next step's values from
// the row as stored (bf16 after its rounding), exactly as the generation op reads it, while it is
// still in cache.
template <int ALGO, bool MOMENTUM, typename w_t, typename s_t>
void update_rows(const StepArgs& a, w_t* w, s_t* m, s_t* v, int64_t begin, int64_t end) {
  std::vector<float> g(a.d);
  for (int64_t p = begin; p < end; ++p) {
    update_row<ALGO, MOMENTUM>(a, w, m, v, p, g.data());
    for (int64_t s = 0; s < a.B_next; ++s) a.next[s * a.P + p] = generation_dot(w + p * a.d, a.z_next + s * a.d, a.d);
  }
}

void check_storage(const at::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.numel() == numel && t.is_contiguous(), name, ": expected a contiguous tensor of ",
              numel, " values, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              ": expected float32 or bfloat16, got ", t.scalar_type());
}

// Calls body(w_t*, s_t*) with W's and the state's element types.
template <typename Body>
void dispatch_storage(const at::Tensor& W, const at::Tensor& state, Body&& body) {
  const bool w_bf16 = W.scalar_type() == at::kBFloat16;
  const bool s_bf16 = state.scalar_type() == at::kBFloat16;
  auto with_state = [&](auto* w) {
    if (s_bf16) body(w, static_cast<at::BFloat16*>(state.numel() ? state.data_ptr() : nullptr));
    else body(w, static_cast<float*>(state.numel() ? state.data_ptr() : nullptr));
  };
  if (w_bf16) with_state(static_cast<at::BFloat16*>(W.data_ptr()));
  else with_state(static_cast<float*>(W.data_ptr()));
}

at::Tensor hyper_fused_step_cpu(at::Tensor& W, at::Tensor& state1, at::Tensor& state2, const at::Tensor& dtheta,
                                const at::Tensor& z, int64_t algorithm, double lr, double beta1, double beta2,
                                double eps, double weight_decay, int64_t step, int64_t seed,
                                const std::optional<at::Tensor>& z_next,
                                const std::optional<at::Tensor>& next_out) {
  TORCH_CHECK(W.dim() == 2, "W: expected a P×d matrix");
  const int64_t P = W.size(0), d = W.size(1), B = z.size(0);
  TORCH_CHECK(algorithm >= kSGD && algorithm <= kAdamW, "algorithm: expected 0 (SGD), 1 (Adam) or 2 (AdamW)");
  TORCH_CHECK(step >= 1, "step: expected the 1-based count of this update, got ", step);
  TORCH_CHECK(z.dim() == 2 && z.size(1) == d && z.scalar_type() == at::kFloat && z.is_contiguous(),
              "z: expected a contiguous float32 B_γ×", d, " matrix");
  TORCH_CHECK(dtheta.dim() == 2 && dtheta.size(0) == B && dtheta.size(1) == P &&
                  dtheta.scalar_type() == at::kFloat && dtheta.is_contiguous(),
              "dtheta: expected a contiguous float32 ", B, "×", P, " matrix");
  const bool momentum = algorithm == kSGD && beta1 != 0.0;
  check_storage(W, "W", P * d);
  if (algorithm != kSGD || momentum) check_storage(state1, "state1", P * d);
  if (algorithm != kSGD) {
    check_storage(state2, "state2", P * d);
    TORCH_CHECK(state2.scalar_type() == state1.scalar_type(), "state2: expected state1's dtype");
  }
  const bool generate = z_next.has_value() && z_next->defined();
  if (generate)
    TORCH_CHECK(z_next->dim() == 2 && z_next->size(1) == d && z_next->scalar_type() == at::kFloat &&
                    z_next->is_contiguous(),
                "z_next: expected a contiguous float32 B_next×", d, " matrix");
  const bool into_out = next_out.has_value() && next_out->defined();
  TORCH_CHECK(!into_out || generate, "next_out: given without z_next");
  if (into_out)
    TORCH_CHECK(next_out->dim() == 2 && next_out->size(0) == z_next->size(0) && next_out->size(1) == P &&
                    next_out->scalar_type() == at::kFloat && next_out->is_contiguous(),
                "next_out: expected a contiguous float32 ", z_next->size(0), "×", P, " matrix");
  at::Tensor next = into_out ? *next_out
                  : generate ? at::empty({z_next->size(0), P}, z.options()) : at::empty({0}, z.options());
  const StepArgs args{P, d, B, dtheta.data_ptr<float>(), z.data_ptr<float>(),
                      generate ? z_next->size(0) : 0, generate ? z_next->data_ptr<float>() : nullptr,
                      generate ? next.data_ptr<float>() : nullptr,
                      static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2),
                      static_cast<float>(eps), static_cast<float>(weight_decay),
                      1.0f - static_cast<float>(std::pow(beta1, step)),
                      std::sqrt(1.0f - static_cast<float>(std::pow(beta2, step))), static_cast<uint64_t>(seed)};
  const at::Tensor& state_type = (algorithm != kSGD || momentum) ? state1 : W;
  dispatch_storage(W, state_type, [&](auto* w, auto* m) {
    using s_t = std::remove_pointer_t<decltype(m)>;
    s_t* v = algorithm == kSGD ? nullptr : static_cast<s_t*>(state2.data_ptr());
    at::parallel_for(0, P, 256, [&](int64_t begin, int64_t end) {
      if (algorithm == kAdam) update_rows<kAdam, false>(args, w, m, v, begin, end);
      else if (algorithm == kAdamW) update_rows<kAdamW, false>(args, w, m, v, begin, end);
      else if (momentum) update_rows<kSGD, true>(args, w, m, v, begin, end);
      else update_rows<kSGD, false>(args, w, m, v, begin, end);
    });
  });
  return into_out ? at::empty({0}, z.options()) : next;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("hyper_fused_step_(Tensor(a!) W, Tensor(b!) state1, Tensor(c!) state2, Tensor dtheta, Tensor z, "
        "int algorithm, float lr, float beta1, float beta2, float eps, float weight_decay, int step, "
        "int seed, Tensor? z_next=None, Tensor(d!)? next_out=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("hyper_fused_step_", &hyper_fused_step_cpu);
}

}  // namespace hyperkd
