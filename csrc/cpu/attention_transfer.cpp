// Fused attention-transfer KD on the CPU (LayerKD-HN Eq. 4–7): one parallel pass per (layer,
// sample) row computes the spatial map, its L2 norm, the row's loss, the row's gradient with
// respect to the map, dL/dS, and from it the feature's gradient, while the row (C·H·W values) is
// still in cache. The loss is a scalar, so that gradient is final up to the incoming gradient's
// factor: backward has no feature left to read, and nothing but the gradients outlives forward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "layers.h"

namespace hyperkd {
namespace {

// |a|^p with the common exponents specialised: std::pow in the inner loop costs ~20x a multiply.
enum PowMode { kPowGeneral = 0, kPowOne = 1, kPowTwo = 2 };

inline int pow_mode(double p) { return p == 1.0 ? kPowOne : (p == 2.0 ? kPowTwo : kPowGeneral); }

template <int MODE, typename acc_t>
inline acc_t power(acc_t a, acc_t p) {
  if constexpr (MODE == kPowOne) return a;
  if constexpr (MODE == kPowTwo) return a * a;
  return std::pow(a, p);
}

template <typename acc_t>
inline acc_t sign(acc_t x) { return static_cast<acc_t>((x > 0) - (x < 0)); }

// Visits every (c, h, w) of one sample, innermost along the smallest stride of `v`, so that both
// NCHW and channels_last inputs stream through memory. fn(c, hw, offset in v, offset in u).
template <typename Fn>
inline void for_each_element(const FeatureView& v, const FeatureView& u, Fn&& fn) {
  if (v.plane_contiguous() && u.plane_contiguous()) {
    // The common NCHW case: one flat run per channel, which the compiler vectorises.
    const int64_t HW = v.HW();
    for (int64_t c = 0; c < v.C; ++c) {
      const int64_t vc = c * v.sc, uc = c * u.sc;
      for (int64_t i = 0; i < HW; ++i) fn(c, i, vc + i, uc + i);
    }
  } else if (v.sc >= v.sw) {
    for (int64_t c = 0; c < v.C; ++c)
      for (int64_t h = 0; h < v.H; ++h)
        for (int64_t w = 0; w < v.W; ++w)
          fn(c, h * v.W + w, c * v.sc + h * v.sh + w * v.sw, c * u.sc + h * u.sh + w * u.sw);
  } else {
    for (int64_t h = 0; h < v.H; ++h)
      for (int64_t w = 0; w < v.W; ++w)
        for (int64_t c = 0; c < v.C; ++c)
          fn(c, h * v.W + w, c * v.sc + h * v.sh + w * v.sw, c * u.sc + h * u.sh + w * u.sw);
  }
}

// S of Eq. 4–6 for one sample: kind 0 Σ|f|, kind 1 Σ|f|^p, kind 2 (max|f|)^p = max |f|^p.
template <int KIND, int MODE, typename scalar_t, typename acc_t>
void spatial_map(const FeatureView& v, const scalar_t* f, acc_t p, acc_t* S) {
  std::fill(S, S + v.HW(), acc_t(0));
  if (v.plane_contiguous()) {
    // The NCHW case. The no-alias promise and the SIMD lanes are spelled out so that the loop
    // vectorises without a runtime check that S and f do not overlap.
    const int64_t HW = v.HW();
    acc_t* __restrict__ s = S;
    for (int64_t c = 0; c < v.C; ++c) {
      const scalar_t* __restrict__ fc = f + c * v.sc;
      if constexpr (KIND == 2) {
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) {
          // Spelled as a select: GCC 12 leaves std::max(s[i], std::abs(x)) scalar (2x slower).
          const acc_t a = std::abs(static_cast<acc_t>(fc[i]));
          s[i] = a > s[i] ? a : s[i];
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) {
          const acc_t a = std::abs(static_cast<acc_t>(fc[i]));
          s[i] += KIND == 0 ? a : power<MODE>(a, p);
        }
      }
    }
  } else {
    for_each_element(v, v, [&](int64_t, int64_t hw, int64_t off, int64_t) {
      acc_t a = std::abs(static_cast<acc_t>(f[off]));
      if constexpr (KIND == 0) S[hw] += a;
      if constexpr (KIND == 1) S[hw] += power<MODE>(a, p);
      if constexpr (KIND == 2) S[hw] = std::max(S[hw], a);
    });
  }
  if constexpr (KIND == 2)
    for (int64_t i = 0; i < v.HW(); ++i) S[i] = power<MODE>(S[i], p);
}

// Kind 2's map before the power, A = max_c |f_c|, with the number of channels attaining it at each
// position (torch.amax splits the gradient evenly among ties). One branch-free pass: a new maximum
// restarts the count, an equal value adds to it.
template <typename scalar_t, typename acc_t>
void max_map_with_ties(const FeatureView& v, const scalar_t* f, acc_t* __restrict__ amax,
                       acc_t* __restrict__ ties) {
  std::fill(amax, amax + v.HW(), acc_t(0));
  std::fill(ties, ties + v.HW(), acc_t(0));
  auto take = [&](int64_t hw, acc_t a) {
    const acc_t m = amax[hw];
    ties[hw] = a > m ? acc_t(1) : ties[hw] + static_cast<acc_t>(a == m);
    amax[hw] = a > m ? a : m;  // a select, which vectorises (see spatial_map)
  };
  if (v.plane_contiguous()) {
    for (int64_t c = 0; c < v.C; ++c) {
      const scalar_t* __restrict__ fc = f + c * v.sc;
#pragma omp simd
      for (int64_t i = 0; i < v.HW(); ++i) take(i, std::abs(static_cast<acc_t>(fc[i])));
    }
  } else {
    for_each_element(v, v, [&](int64_t, int64_t hw, int64_t off, int64_t) {
      take(hw, std::abs(static_cast<acc_t>(f[off])));
    });
  }
}

// df = gS · dS/df for one sample (df has its own strides). Kind 2 routes the gradient to the
// channels attaining the maximum, `amax` and `ties` from max_map_with_ties.
template <int KIND, int MODE, typename scalar_t, typename acc_t>
void spatial_map_backward(const FeatureView& v, const scalar_t* f, const FeatureView& dv,
                          scalar_t* df, acc_t p, acc_t* __restrict__ gS, const acc_t* __restrict__ amax,
                          const acc_t* __restrict__ ties) {
  if constexpr (KIND == 2) {
    for (int64_t i = 0; i < v.HW(); ++i) {
      const acc_t dpow = MODE == kPowOne ? acc_t(1)
                                         : (MODE == kPowTwo ? 2 * amax[i] : p * std::pow(amax[i], p - 1));
      gS[i] *= dpow / ties[i];  // gS·p·max^(p−1) / ties
    }
  }
  const acc_t* __restrict__ gs = gS;
  const auto grad = [&](acc_t x, int64_t hw) -> scalar_t {
    acc_t g;
    if constexpr (KIND == 0 || (KIND == 1 && MODE == kPowOne)) g = gs[hw] * sign(x);
    else if constexpr (KIND == 1 && MODE == kPowTwo) g = gs[hw] * 2 * x;
    else if constexpr (KIND == 1) g = gs[hw] * p * std::pow(std::abs(x), p - 1) * sign(x);
    else g = static_cast<acc_t>(std::abs(x) == amax[hw]) * gs[hw] * sign(x);
    return static_cast<scalar_t>(g);
  };
  if (v.plane_contiguous() && dv.plane_contiguous()) {
    for (int64_t c = 0; c < v.C; ++c) {
      const scalar_t* __restrict__ fc = f + c * v.sc;
      write_streamed(df + c * dv.sc, v.HW(), [&](scalar_t* __restrict__ out, int64_t i0, int64_t k) {
#pragma omp simd
        for (int64_t i = 0; i < k; ++i) out[i] = grad(static_cast<acc_t>(fc[i0 + i]), i0 + i);
      });
    }
    return;
  }
  // Restrict-qualified aliases let the compiler vectorise without runtime overlap checks.
  const scalar_t* __restrict__ fr = f;
  scalar_t* __restrict__ dfr = df;
  for_each_element(v, dv, [&](int64_t, int64_t hw, int64_t off, int64_t doff) {
    dfr[doff] = grad(static_cast<acc_t>(fr[off]), hw);
  });
}

// Dispatches a body templated on <KIND, MODE> to the runtime kind and exponent.
template <typename Body>
void dispatch_kind(int64_t kind, double p, Body&& body) {
  const int mode = pow_mode(p);  // kind 0's map ignores it; the p-norm of Eq. 7 does not
  auto with_mode = [&](auto kind_c) {
    if (mode == kPowOne) body(kind_c, std::integral_constant<int, kPowOne>{});
    else if (mode == kPowTwo) body(kind_c, std::integral_constant<int, kPowTwo>{});
    else body(kind_c, std::integral_constant<int, kPowGeneral>{});
  };
  if (kind == 0) with_mode(std::integral_constant<int, 0>{});
  else if (kind == 1) with_mode(std::integral_constant<int, 1>{});
  else with_mode(std::integral_constant<int, 2>{});
}

void check_args(int64_t kind, double p, double eps) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "kind: expected 0, 1 or 2, got ", kind);
  TORCH_CHECK(p > 0, "p: expected p > 0, got ", p);
  TORCH_CHECK(eps > 0, "eps: expected eps > 0, got ", eps);
}

// Normalises each sample's map in place, q = S / max(‖S‖₂, eps); returns ‖S‖₂.
template <typename acc_t>
acc_t normalise_row(acc_t* S, int64_t HW, acc_t eps) {
  acc_t sq = 0;
  for (int64_t i = 0; i < HW; ++i) sq += S[i] * S[i];
  const acc_t n = std::sqrt(sq);
  const acc_t inv = acc_t(1) / std::max(n, eps);
  for (int64_t i = 0; i < HW; ++i) S[i] *= inv;
  return n;
}

// Per-row loss of Eq. 7: ‖q − t‖_p ("sum"), or Σ (q − t)² before the mean ("mean").
template <int MODE, typename acc_t>
acc_t row_loss(const acc_t* q, const acc_t* t, int64_t HW, acc_t p, bool mean) {
  acc_t r = 0;
  if (mean) {
    for (int64_t i = 0; i < HW; ++i) r += (q[i] - t[i]) * (q[i] - t[i]);
    return r;
  }
  for (int64_t i = 0; i < HW; ++i) r += power<MODE>(std::abs(q[i] - t[i]), p);
  if constexpr (MODE == kPowOne) return r;
  if constexpr (MODE == kPowTwo) return std::sqrt(r);
  return std::pow(r, acc_t(1) / p);
}

// dL/dq of one row, where `row` is that row's loss.
template <int MODE, typename acc_t>
inline acc_t row_loss_grad(acc_t d, acc_t row, acc_t p, bool mean) {
  if (mean) return d;
  if constexpr (MODE == kPowOne) return sign(d);
  if (row <= 0) return 0;
  if constexpr (MODE == kPowTwo) return d / row;
  return std::pow(std::abs(d), p - 1) * sign(d) / std::pow(row, p - 1);
}

std::vector<at::Tensor> at_summary_cpu(at::TensorList feats, int64_t kind, double p, double eps) {
  check_feature_list(feats, "feats");
  check_args(kind, p, eps);
  const int64_t B = feats[0].size(0), M = feats.size();
  const auto views = feature_views(feats);
  std::vector<at::Tensor> out;
  for (const auto& f : feats)
    out.push_back(at::empty({B, f.size(2) * f.size(3)}, f.options().dtype(acc_type_of(f.scalar_type()))));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats[0].scalar_type(), "at_summary", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_kind(kind, p, [&](auto KIND, auto MODE) {
      parallel_for_rows(M, B, [&](int64_t m, int64_t b) {
        const auto& v = views[m];
        acc_t* S = out[m].data_ptr<acc_t>() + b * v.HW();
        spatial_map<KIND, MODE>(v, static_cast<const scalar_t*>(v.data) + b * v.sb, acc_t(p), S);
        normalise_row(S, v.HW(), acc_t(eps));
      });
    });
  });
  return out;
}

// Each teacher entry is a summary (B×HW normalised maps in the accumulation type) or the raw
// feature (the student's shape and dtype), whose row maps are then made inside the loss's rows.
void check_teacher(at::TensorList student, at::TensorList teacher) {
  TORCH_CHECK(teacher.size() == student.size(), "teacher: expected ", student.size(),
              " entries, got ", teacher.size());
  const auto acc = acc_type_of(student[0].scalar_type());
  for (size_t m = 0; m < student.size(); ++m) {
    const auto& s = student[m];
    const auto& t = teacher[m];
    if (t.dim() == 4) {
      TORCH_CHECK(t.sizes() == s.sizes() && t.scalar_type() == s.scalar_type(), "teacher[", m,
                  "]: expected a raw feature of shape ", s.sizes(), " and dtype ", s.scalar_type(),
                  ", got ", t.sizes(), " ", t.scalar_type());
      continue;
    }
    TORCH_CHECK(t.dim() == 2 && t.size(0) == s.size(0) && t.size(1) == s.size(2) * s.size(3),
                "teacher[", m, "]: expected a ", s.size(0), "×", s.size(2) * s.size(3),
                " summary or a raw feature of shape ", s.sizes(), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == acc && t.is_contiguous(), "teacher[", m,
                "]: expected a contiguous ", acc, " summary");
  }
}

// Writes one row's dL/dS over its normalised map q (in place): dL/dq, then back through
// q = S / max(‖S‖, eps): (g − q·⟨q, g⟩)/‖S‖, or g/eps where the norm was clamped.
template <int MODE, typename acc_t>
void row_map_grad(acc_t* q, const acc_t* t, int64_t HW, acc_t n, acc_t row, acc_t p, acc_t eps,
                  acc_t scale, bool mean) {
  acc_t* g = thread_scratch<acc_t>(HW);
  acc_t dot = 0;
  for (int64_t i = 0; i < HW; ++i) {
    g[i] = row_loss_grad<MODE>(q[i] - t[i], row, p, mean);
    dot += g[i] * q[i];
  }
  const bool clamped = !(n > eps);
  for (int64_t i = 0; i < HW; ++i) q[i] = scale * (clamped ? g[i] / eps : (g[i] - q[i] * dot) / n);
}

// Returns (Σ_m λ_m L_m, the unweighted L_m, and with `with_grad` d(Σ_m λ_m L_m)/df_m per layer).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> at_loss_cpu(
    at::TensorList student, at::TensorList teacher, const at::Tensor& lambdas, int64_t kind,
    double p, double eps, bool mean, bool with_grad) {
  check_feature_list(student, "student");
  check_args(kind, p, eps);
  check_teacher(student, teacher);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  check_lambdas(lambdas, M, acc);
  const auto views = feature_views(student);
  std::vector<FeatureView> teacher_views;
  for (const auto& t : teacher) teacher_views.push_back(t.dim() == 4 ? feature_view(t) : FeatureView{});
  auto opts = student[0].options().dtype(acc);
  at::Tensor layer_losses = at::empty({M}, opts);
  at::Tensor loss = at::empty({}, opts);
  std::vector<at::Tensor> grads = with_grad ? empty_like_each(student) : std::vector<at::Tensor>{};
  const auto grad_views = feature_views(grads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "at_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* lam = lambdas.data_ptr<acc_t>();
    std::vector<acc_t> rows(M * B);
    dispatch_kind(kind, p, [&](auto KIND, auto MODE) {
      constexpr int mode = decltype(MODE)::value;
      parallel_for_rows(M, B, [&](int64_t m, int64_t b) {
        const auto& v = views[m];
        const int64_t HW = v.HW();
        const scalar_t* f = static_cast<const scalar_t*>(v.data) + b * v.sb;
        acc_t* q = thread_scratch<acc_t, 1>(HW);
        acc_t *amax = nullptr, *ties = nullptr;
        if constexpr (KIND == 2) {
          amax = thread_scratch<acc_t, 3>(HW);
          ties = thread_scratch<acc_t, 4>(HW);
          max_map_with_ties(v, f, amax, ties);
          for (int64_t i = 0; i < HW; ++i) q[i] = power<MODE>(amax[i], acc_t(p));
        } else {
          spatial_map<KIND, MODE>(v, f, acc_t(p), q);
        }
        const acc_t n = normalise_row(q, HW, acc_t(eps));
        const acc_t* t;
        if (teacher[m].dim() == 4) {
          // A raw teacher's row map lives in scratch: no B×HW summary is ever allocated.
          const auto& tv = teacher_views[m];
          acc_t* tq = thread_scratch<acc_t, 2>(HW);
          spatial_map<KIND, MODE>(tv, static_cast<const scalar_t*>(tv.data) + b * tv.sb, acc_t(p), tq);
          normalise_row(tq, HW, acc_t(eps));
          t = tq;
        } else {
          t = teacher[m].data_ptr<acc_t>() + b * HW;
        }
        const acc_t row = row_loss<mode>(q, t, HW, acc_t(p), mean);
        rows[m * B + b] = row;
        if (!with_grad) return;
        const acc_t scale = lam[m] * (mean ? acc_t(2) / (B * HW) : acc_t(1));
        row_map_grad<mode>(q, t, HW, n, row, acc_t(p), acc_t(eps), scale, mean);
        const auto& dv = grad_views[m];
        spatial_map_backward<KIND, MODE>(v, f, dv, static_cast<scalar_t*>(dv.data) + b * dv.sb,
                                         acc_t(p), q, amax, ties);
      });
    });
    loss.fill_(layer_terms(rows.data(), M, B, lam,
                           [&](int64_t m) { return mean ? acc_t(1) / (B * views[m].HW()) : acc_t(1); },
                           layer_losses.data_ptr<acc_t>()));
  });
  return {loss, layer_losses, grads};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("at_summary(Tensor[] feats, int kind, float p, float eps) -> Tensor[]");
  m.def("at_loss(Tensor[] student, Tensor[] teacher, Tensor lambdas, int kind, float p, float eps, "
        "bool mean, bool with_grad) -> (Tensor loss, Tensor layer_losses, Tensor[] grads)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("at_summary", &at_summary_cpu);
  m.impl("at_loss", &at_loss_cpu);
}

}  // namespace hyperkd
