// Fused JSD map loss on the CPU (layer-wise learning rates, §3.4 Eq. 8–10 as read in
// hyperkd/ops/jsd_map.py): one parallel pass per (layer, sample) row makes the map
// S = Σ_c |f_c|^p, its distribution P (S/ΣS, or softmax S), the Jensen–Shannon divergence with
// the teacher's distribution Q, dJ/dP, dJ/dS and the feature's gradient, while the row is in
// cache. The loss is a scalar, so that gradient is final up to the incoming gradient's factor:
// nothing but the gradients outlives forward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "layers.h"

// libmvec's SIMD logf/log for the `omp simd` loops (declared as simd_math.h does for exp).
#if defined(__x86_64__) && defined(__GLIBC__)
extern "C" {
#pragma omp declare simd notinbranch
float logf(float);
#pragma omp declare simd notinbranch
double log(double);
}
#endif

namespace hyperkd {
namespace {

inline float log_of(float x) { return logf(x); }
inline double log_of(double x) { return log(x); }

// |a|^p with the common exponents specialised: std::pow in the inner loop costs ~20x a multiply.
enum PowMode { kPowGeneral = 0, kPowOne = 1, kPowTwo = 2 };

template <int MODE, typename acc_t>
inline acc_t abs_power(acc_t x, acc_t p) {
  const acc_t a = std::abs(x);
  if constexpr (MODE == kPowOne) return a;
  if constexpr (MODE == kPowTwo) return a * a;
  return std::pow(a, p);
}

// d|x|^p/dx.
template <int MODE, typename acc_t>
inline acc_t abs_power_grad(acc_t x, acc_t p) {
  const acc_t sign = static_cast<acc_t>((x > 0) - (x < 0));
  if constexpr (MODE == kPowOne) return sign;
  if constexpr (MODE == kPowTwo) return 2 * x;
  return p * std::pow(std::abs(x), p - 1) * sign;
}

template <typename Body>
void dispatch_power(double p, Body&& body) {
  if (p == 1.0) body(std::integral_constant<int, kPowOne>{});
  else if (p == 2.0) body(std::integral_constant<int, kPowTwo>{});
  else body(std::integral_constant<int, kPowGeneral>{});
}

// S = Σ_c |f_c|^p of one sample's contiguous C×N row.
template <int MODE, typename scalar_t, typename acc_t>
void channel_map(const scalar_t* f, int64_t C, int64_t N, acc_t p, acc_t* __restrict__ S) {
  std::fill(S, S + N, acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* __restrict__ fc = f + c * N;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) S[i] += abs_power<MODE>(static_cast<acc_t>(fc[i]), p);
  }
}

// S → P in place: S/max(ΣS, eps), or softmax(S). Returns the normaliser ΣS (unused by softmax).
template <typename acc_t>
acc_t to_distribution(acc_t* __restrict__ S, int64_t N, bool softmax, acc_t eps) {
  if (!softmax) {
    acc_t z = 0;
#pragma omp simd reduction(+ : z)
    for (int64_t i = 0; i < N; ++i) z += S[i];
    const acc_t inv = acc_t(1) / std::max(z, eps);
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) S[i] *= inv;
    return z;
  }
  const acc_t mx = *std::max_element(S, S + N);
  acc_t z = 0;
  for (int64_t i = 0; i < N; ++i) {
    S[i] = std::exp(S[i] - mx);
    z += S[i];
  }
  const acc_t inv = acc_t(1) / z;
  for (int64_t i = 0; i < N; ++i) S[i] *= inv;
  return z;
}

// One row's JSD(P‖Q) = ½Σ P log((P+ε)/(M+ε)) + ½Σ Q log((Q+ε)/(M+ε)), M = (P+Q)/2; P is
// overwritten with dJ/dS (λ and the reduction folded into `scale`).
template <typename acc_t>
acc_t jsd_row_with_grad(acc_t* __restrict__ P, const acc_t* __restrict__ Q, int64_t N, acc_t z,
                        bool softmax, acc_t eps, acc_t scale, bool with_grad) {
  acc_t* __restrict__ g = thread_scratch<acc_t, 2>(N);
  acc_t row = 0, dot = 0;
#pragma omp simd reduction(+ : row, dot)
  for (int64_t i = 0; i < N; ++i) {
    const acc_t pi = P[i], qi = Q[i], mi = (pi + qi) / 2;
    const acc_t lp = log_of(pi + eps), lq = log_of(qi + eps), lm = log_of(mi + eps);
    row += pi * lp + qi * lq - 2 * mi * lm;
    // dJ/dP_i: the ½ P log(P+ε) term gives ½(log(P+ε) + P/(P+ε)), −M log(M+ε) its ½ share.
    const acc_t gi = (lp + pi / (pi + eps) - lm - mi / (mi + eps)) / 2;
    g[i] = gi;
    dot += gi * pi;
  }
  if (!with_grad) return row / 2;
  // Back through P: softmax dS = P(g − ⟨g,P⟩); S/Z: dS = (g − ⟨g,P⟩)/Z, or g/eps where Z was clamped.
  if (softmax) {
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) P[i] = scale * P[i] * (g[i] - dot);
  } else if (z > eps) {
    const acc_t k = scale / z;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) P[i] = k * (g[i] - dot);
  } else {
    const acc_t k = scale / eps;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) P[i] = k * g[i];
  }
  return row / 2;
}

// df = dS · d|f|^p/df over one sample's C×N row.
template <int MODE, typename scalar_t, typename acc_t>
void channel_map_backward(const scalar_t* f, int64_t C, int64_t N, acc_t p,
                          const acc_t* __restrict__ dS, scalar_t* df) {
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* __restrict__ fc = f + c * N;
    scalar_t* __restrict__ dc = df + c * N;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i)
      dc[i] = static_cast<scalar_t>(dS[i] * abs_power_grad<MODE>(static_cast<acc_t>(fc[i]), p));
  }
}

void check_args(double p, double eps, at::TensorList feats, const char* name) {
  TORCH_CHECK(p > 0, "p: expected p > 0, got ", p);
  TORCH_CHECK(eps > 0, "eps: expected eps > 0, got ", eps);
  check_feature_list(feats, name);
  for (size_t m = 0; m < feats.size(); ++m)
    TORCH_CHECK(feats[m].is_contiguous(), name, "[", m, "]: expected a contiguous tensor");
}

std::vector<at::Tensor> jsd_map_summary_cpu(at::TensorList feats, double p, bool softmax, double eps) {
  check_args(p, eps, feats, "feats");
  const int64_t B = feats[0].size(0), M = feats.size();
  std::vector<at::Tensor> out;
  for (const auto& f : feats)
    out.push_back(at::empty({B, f.size(2) * f.size(3)}, f.options().dtype(acc_type_of(f.scalar_type()))));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats[0].scalar_type(), "jsd_map_summary", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_power(p, [&](auto MODE) {
      parallel_for_rows(M, B, [&](int64_t m, int64_t b) {
        const auto& f = feats[m];
        const int64_t C = f.size(1), N = f.size(2) * f.size(3);
        acc_t* S = out[m].data_ptr<acc_t>() + b * N;
        channel_map<MODE>(f.const_data_ptr<scalar_t>() + b * C * N, C, N, acc_t(p), S);
        to_distribution(S, N, softmax, acc_t(eps));
      });
    });
  });
  return out;
}

// Returns (Σ_m λ_m L_m, the unweighted L_m, and with `with_grad` d(Σ_m λ_m L_m)/df_m per layer);
// L_m is the mean (or sum) over the batch of the rows' JSD.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> jsd_map_loss_cpu(
    at::TensorList student, at::TensorList teacher, const at::Tensor& lambdas, double p,
    bool softmax, double eps, bool mean, bool with_grad) {
  check_args(p, eps, student, "student");
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  TORCH_CHECK(teacher.size() == student.size(), "teacher: expected ", M, " entries, got ", teacher.size());
  for (int64_t m = 0; m < M; ++m) {
    const auto& s = student[m];
    const auto& t = teacher[m];
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == s.size(2) * s.size(3) &&
                    t.scalar_type() == acc && t.is_contiguous(),
                "teacher[", m, "]: expected a contiguous ", acc, " ", B, "×", s.size(2) * s.size(3),
                " distribution, got ", t.sizes(), " ", t.scalar_type());
  }
  check_lambdas(lambdas, M, acc);
  auto opts = student[0].options().dtype(acc);
  at::Tensor layer_losses = at::empty({M}, opts);
  at::Tensor loss = at::empty({}, opts);
  std::vector<at::Tensor> grads = with_grad ? empty_like_each(student) : std::vector<at::Tensor>{};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "jsd_map_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* lam = lambdas.data_ptr<acc_t>();
    std::vector<acc_t> rows(M * B);
    dispatch_power(p, [&](auto MODE) {
      parallel_for_rows(M, B, [&](int64_t m, int64_t b) {
        const auto& s = student[m];
        const int64_t C = s.size(1), N = s.size(2) * s.size(3);
        const scalar_t* f = s.const_data_ptr<scalar_t>() + b * C * N;
        acc_t* P = thread_scratch<acc_t, 1>(N);
        channel_map<MODE>(f, C, N, acc_t(p), P);
        const acc_t z = to_distribution(P, N, softmax, acc_t(eps));
        const acc_t scale = lam[m] * (mean ? acc_t(1) / B : acc_t(1));
        rows[m * B + b] = jsd_row_with_grad(P, teacher[m].const_data_ptr<acc_t>() + b * N, N, z,
                                            softmax, acc_t(eps), scale, with_grad);
        if (with_grad)
          channel_map_backward<MODE>(f, C, N, acc_t(p), P, grads[m].data_ptr<scalar_t>() + b * C * N);
      });
    });
    loss.fill_(layer_terms(rows.data(), M, B, lam, [&](int64_t) { return mean ? acc_t(1) / B : acc_t(1); },
                           layer_losses.data_ptr<acc_t>()));
  });
  return {loss, layer_losses, grads};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("jsd_map_summary(Tensor[] feats, float p, bool softmax, float eps) -> Tensor[]");
  m.def("jsd_map_loss(Tensor[] student, Tensor[] teacher, Tensor lambdas, float p, bool softmax, "
        "float eps, bool mean, bool with_grad) -> (Tensor loss, Tensor layer_losses, Tensor[] grads)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("jsd_map_summary", &jsd_map_summary_cpu);
  m.impl("jsd_map_loss", &jsd_map_loss_cpu);
}

}  // namespace hyperkd
