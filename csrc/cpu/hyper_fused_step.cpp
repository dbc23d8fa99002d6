// The fused optimizer step of the hypernetwork's output layer on the CPU. W's gradient is the
// rank-B_γ product dθᵀ·z (LayerKD-HN Eq. 2); each task forms it for a few rows of W at a time and
// applies SGD(+momentum), Adam or AdamW in place, so no P×d gradient is ever allocated. W and the
// optimizer state may be bf16, written back with stochastic rounding so that small updates are
// not lost on average.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

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

// Reads and writes one tensor of W or the state, fp32 or bf16 (stochastically rounded).
struct Slot {
  void* data;
  bool bf16;
  uint64_t seed;
  float get(int64_t i) const {
    return bf16 ? static_cast<float>(static_cast<const at::BFloat16*>(data)[i]) : static_cast<const float*>(data)[i];
  }
  void set(int64_t i, float v) const {
    if (bf16) static_cast<at::BFloat16*>(data)[i] = stochastic_bf16(v, seed, static_cast<uint64_t>(i));
    else static_cast<float*>(data)[i] = v;
  }
};

Slot slot(const at::Tensor& t, const char* name, int64_t numel, uint64_t seed) {
  TORCH_CHECK(t.numel() == numel && t.is_contiguous(), name, ": expected a contiguous tensor of ",
              numel, " values, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              ": expected float32 or bfloat16, got ", t.scalar_type());
  return {t.data_ptr(), t.scalar_type() == at::kBFloat16, seed};
}

void hyper_fused_step_cpu(at::Tensor& W, at::Tensor& state1, at::Tensor& state2, const at::Tensor& dtheta,
                          const at::Tensor& z, int64_t algorithm, double lr, double beta1, double beta2,
                          double eps, double weight_decay, int64_t step, int64_t seed) {
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
  const uint64_t s = static_cast<uint64_t>(seed);
  const Slot w = slot(W, "W", P * d, s);
  const Slot m = algorithm == kSGD && !momentum ? Slot{} : slot(state1, "state1", P * d, s ^ 0x1111u);
  const Slot v = algorithm == kSGD ? Slot{} : slot(state2, "state2", P * d, s ^ 0x2222u);
  const float* dt = dtheta.data_ptr<float>();
  const float* zz = z.data_ptr<float>();
  const float flr = lr, b1 = beta1, b2 = beta2, feps = eps, wd = weight_decay;
  const float bc1 = 1.0f - static_cast<float>(std::pow(beta1, step));
  const float bc2_sqrt = std::sqrt(1.0f - static_cast<float>(std::pow(beta2, step)));
  at::parallel_for(0, P, 256, [&](int64_t begin, int64_t end) {
    std::vector<float> g(d);
    for (int64_t p = begin; p < end; ++p) {
      // Row p of dW = dθᵀ·z, the only slice of W's gradient that ever exists.
      std::fill(g.begin(), g.end(), 0.0f);
      for (int64_t b = 0; b < B; ++b) {
        const float c = dt[b * P + p];
        for (int64_t k = 0; k < d; ++k) g[k] += c * zz[b * d + k];
      }
      for (int64_t k = 0; k < d; ++k) {
        const int64_t i = p * d + k;
        float wi = w.get(i), gi = g[k];
        if (algorithm == kSGD) {
          gi += wd * wi;
          if (momentum) {
            gi = b1 * m.get(i) + gi;  // zero-initialised buffer: the first step stores g itself
            m.set(i, gi);
          }
          wi -= flr * gi;
        } else {
          if (algorithm == kAdam) gi += wd * wi;
          else wi *= 1.0f - flr * wd;
          float mi = m.get(i), vi = v.get(i);
          mi += (1.0f - b1) * (gi - mi);
          vi = b2 * vi + (1.0f - b2) * gi * gi;
          m.set(i, mi);
          v.set(i, vi);
          wi -= (flr / bc1) * mi / (std::sqrt(vi) / bc2_sqrt + feps);
        }
        w.set(i, wi);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("hyper_fused_step_(Tensor(a!) W, Tensor(b!) state1, Tensor(c!) state2, Tensor dtheta, Tensor z, "
        "int algorithm, float lr, float beta1, float beta2, float eps, float weight_decay, int step, "
        "int seed) -> ()");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("hyper_fused_step_", &hyper_fused_step_cpu);
}

}  // namespace hyperkd
