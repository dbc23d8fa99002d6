// Fused per-channel KD losses on the CPU, each a reduction over the H·W positions of one
// (sample, channel) row of student f and teacher g:
//   CwD (LayerKD-HN Eq. 20–21): KL(softmax(g/τ) ‖ softmax(f/τ)) per row, × τ²/(C·B) per layer;
//   FitNets (Eq. 11): ‖f − g‖₂ per row, summed.
// Each (sample, channel) row is read once: its loss, then its gradient from the row's exps or
// difference while they are in cache (the loss is a scalar, so the gradient is final up to the
// incoming gradient's factor, which autograd applies). Nothing else outlives forward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "layers.h"
#include "simd_math.h"

namespace hyperkd {
namespace {

void check_teacher_features(at::TensorList student, at::TensorList teacher) {
  TORCH_CHECK(teacher.size() == student.size(), "teacher: expected ", student.size(), " features, got ",
              teacher.size());
  for (size_t m = 0; m < student.size(); ++m)
    TORCH_CHECK(teacher[m].sizes() == student[m].sizes() &&
                    teacher[m].scalar_type() == student[m].scalar_type(),
                "teacher[", m, "]: expected shape ", student[m].sizes(), " and dtype ",
                student[m].scalar_type(), ", got ", teacher[m].sizes(), " ", teacher[m].scalar_type());
}

// What both losses start from: checked inputs, their strided views, the λ_m in the accumulation
// type, the outputs, and with `with_grad` fresh gradients with the students' strides.
struct PairedLoss {
  int64_t B, M;
  std::vector<FeatureView> sv, tv, dv;
  std::vector<at::Tensor> grads;
  at::Tensor terms, losses, rows;
};

PairedLoss paired_loss(at::TensorList student, at::TensorList teacher, const at::Tensor& lambdas,
                       bool with_grad) {
  check_feature_list(student, "student");
  check_teacher_features(student, teacher);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  check_lambdas(lambdas, M, acc);
  std::vector<at::Tensor> grads = with_grad ? empty_like_each(student) : std::vector<at::Tensor>{};
  auto dv = feature_views(grads);
  auto opts = student[0].options().dtype(acc);
  return {B, M, feature_views(student), feature_views(teacher), std::move(dv), std::move(grads),
          at::empty({M}, opts), at::empty({M}, opts), at::empty({M, B}, opts)};
}

template <typename T>
inline const T* row_ptr(const FeatureView& v, int64_t b, int64_t c) {
  return static_cast<const T*>(v.data) + b * v.sb + c * v.sc;
}

template <typename T>
inline T* row_ptr_mut(const FeatureView& v, int64_t b, int64_t c) {
  return static_cast<T*>(v.data) + b * v.sb + c * v.sc;
}

// Visits the H·W positions of one channel in every view: fn(offset in v, offset in each other
// view). Planes contiguous in all views (NCHW) take one flat loop, which the compiler vectorises.
template <typename Fn, typename... Views>
inline void for_each_position(Fn&& fn, const FeatureView& v, const Views&... others) {
  if ((v.plane_contiguous() && ... && others.plane_contiguous())) {
    for (int64_t i = 0; i < v.HW(); ++i) fn(i, ((void)others, i)...);
    return;
  }
  for (int64_t h = 0; h < v.H; ++h)
    for (int64_t w = 0; w < v.W; ++w) fn(h * v.sh + w * v.sw, (h * others.sh + w * others.sw)...);
}

// for_each_position for a body whose positions are independent (each writes only its own
// output), so the flat loop may run as SIMD lanes: that also vectorises its calls to std::exp.
template <typename Fn, typename... Views>
inline void for_each_elementwise(Fn&& fn, const FeatureView& v, const Views&... others) {
  if ((v.plane_contiguous() && ... && others.plane_contiguous())) {
#pragma omp simd
    for (int64_t i = 0; i < v.HW(); ++i) fn(i, ((void)others, i)...);
    return;
  }
  for_each_position(fn, v, others...);
}

// ------------------------------------------------------------------------------------------ CwD

// KL(softmax(g/τ) ‖ softmax(f/τ)) of one channel, in two passes: the maxima, then one exp per
// element of each map, kept in `es`/`et` for the gradient. With log p = x/τ − lse and Σ p_t = 1,
// KL = Σ p_t (g − f)/τ − lse_t + lse_s. Returns the KL; z_s, z_t are the two exp sums.
template <typename scalar_t, typename acc_t>
acc_t channel_kl(const FeatureView& s, const scalar_t* f, const FeatureView& t, const scalar_t* g,
                 acc_t inv_tau, acc_t* __restrict__ es, acc_t* __restrict__ et, acc_t& z_s, acc_t& z_t) {
  acc_t mx_s = -std::numeric_limits<acc_t>::infinity(), mx_t = mx_s;
  acc_t zs = 0, zt = 0, weighted = 0;
  auto take_max = [&](int64_t o, int64_t p) {
    mx_s = std::max(mx_s, static_cast<acc_t>(f[o]) * inv_tau);
    mx_t = std::max(mx_t, static_cast<acc_t>(g[p]) * inv_tau);
  };
  // k: the position's index h·W + w in the channel, for the exp buffers. Always inlined: called
  // out of line, the loop below cannot vectorise its exps, and GCC left it out of line once this
  // file grew past its inlining budget (CwD 2.5x slower).
  auto add_exps = [&](int64_t k, int64_t o, int64_t p) __attribute__((always_inline)) {
    const acc_t fs = static_cast<acc_t>(f[o]) * inv_tau, gt = static_cast<acc_t>(g[p]) * inv_tau;
    const acc_t e_s = std::exp(fs - mx_s), e_t = std::exp(gt - mx_t);
    es[k] = e_s;
    et[k] = e_t;
    zs += e_s;
    zt += e_t;
    weighted += e_t * (gt - fs);
  };
  if (s.plane_contiguous() && t.plane_contiguous()) {
    // The reductions must be declared for the compiler to vectorise them (and the exps).
#pragma omp simd reduction(max : mx_s, mx_t)
    for (int64_t j = 0; j < s.HW(); ++j) take_max(j, j);
#pragma omp simd reduction(+ : zs, zt, weighted)
    for (int64_t j = 0; j < s.HW(); ++j) add_exps(j, j, j);
  } else {
    for_each_position(take_max, s, t);
    int64_t k = 0;  // for_each_position walks h-major, w-minor
    for_each_position([&](int64_t o, int64_t p) { add_exps(k++, o, p); }, s, t);
  }
  z_s = zs;
  z_t = zt;
  const acc_t lse_s = mx_s + std::log(zs), lse_t = mx_t + std::log(zt);
  return weighted / zt - lse_t + lse_s;
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> cwd_loss_cpu(
    at::TensorList student, at::TensorList teacher, const at::Tensor& lambdas, double tau,
    bool with_grad) {
  TORCH_CHECK(tau > 0, "tau: expected tau > 0, got ", tau);
  auto out = paired_loss(student, teacher, lambdas, with_grad);
  const int64_t B = out.B;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "cwd_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = acc_t(1) / acc_t(tau);
    const acc_t* lam = lambdas.data_ptr<acc_t>();
    acc_t* r_all = out.rows.data_ptr<acc_t>();
    parallel_for_rows(out.M, B, [&](int64_t m, int64_t b) {
      const auto &s = out.sv[m], &t = out.tv[m];
      acc_t* es = thread_scratch<acc_t, 0>(s.HW());
      acc_t* et = thread_scratch<acc_t, 1>(s.HW());
      // d(λ_m L_m)/df = λ_m · τ²/(C·B) · (p_s − p_t)/τ.
      const acc_t coef = lam[m] * acc_t(tau) / acc_t(s.C * B);
      acc_t kl_sum = 0;
      for (int64_t c = 0; c < s.C; ++c) {
        const scalar_t* f = row_ptr<scalar_t>(s, b, c);
        const scalar_t* g = row_ptr<scalar_t>(t, b, c);
        acc_t z_s, z_t;
        kl_sum += channel_kl(s, f, t, g, inv_tau, es, et, z_s, z_t);
        if (!with_grad) continue;
        // p = exp(x/τ − max)/z: the exps of the pass above, scaled; no exp is taken twice.
        const auto& d = out.dv[m];
        scalar_t* df = row_ptr_mut<scalar_t>(d, b, c);
        const acc_t cs = coef / z_s, ct = coef / z_t;
        if (d.plane_contiguous()) {
          _Pragma("omp simd")
          for (int64_t j = 0; j < d.HW(); ++j) df[j] = static_cast<scalar_t>(cs * es[j] - ct * et[j]);
        } else {
          for (int64_t h = 0; h < d.H; ++h)
            for (int64_t w = 0; w < d.W; ++w)
              df[h * d.sh + w * d.sw] = static_cast<scalar_t>(cs * es[h * d.W + w] - ct * et[h * d.W + w]);
        }
      }
      r_all[m * B + b] = kl_sum;
    });
    layer_terms(r_all, out.M, B, lam, [&](int64_t m) { return acc_t(tau * tau) / acc_t(out.sv[m].C * B); },
                out.losses.data_ptr<acc_t>(), out.terms.data_ptr<acc_t>());
  });
  return {out.terms, out.losses, out.grads};
}

// -------------------------------------------------------------------------------------- FitNets

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> fitnets_loss_cpu(
    at::TensorList student, at::TensorList teacher, const at::Tensor& lambdas, bool with_grad) {
  auto out = paired_loss(student, teacher, lambdas, with_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "fitnets_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* lam = lambdas.data_ptr<acc_t>();
    acc_t* r_all = out.rows.data_ptr<acc_t>();
    parallel_for_rows(out.M, out.B, [&](int64_t m, int64_t b) {
      const auto &s = out.sv[m], &t = out.tv[m];
      acc_t sum = 0;
      for (int64_t c = 0; c < s.C; ++c) {
        const scalar_t* f = row_ptr<scalar_t>(s, b, c);
        const scalar_t* g = row_ptr<scalar_t>(t, b, c);
        auto squared_diff = [&](int64_t o, int64_t p) {
          const acc_t diff = static_cast<acc_t>(f[o]) - static_cast<acc_t>(g[p]);
          return diff * diff;
        };
        acc_t sq = 0;
        if (s.plane_contiguous() && t.plane_contiguous()) {
          // Without the pragma the compiler keeps a float sum in order, one lane at a time.
          // (_Pragma, not #pragma: this code sits inside the AT_DISPATCH macro's argument.)
          _Pragma("omp simd reduction(+ : sq)")
          for (int64_t i = 0; i < s.HW(); ++i) sq += squared_diff(i, i);
        } else {
          for_each_position([&](int64_t o, int64_t p) { sq += squared_diff(o, p); }, s, t);
        }
        const acc_t norm = std::sqrt(sq);
        sum += norm;
        if (!with_grad) continue;
        // d‖f − g‖/df = (f − g)/‖f − g‖, taken as 0 where f = g on the whole row; the row is
        // still in cache.
        const acc_t coef = norm > 0 ? lam[m] / norm : acc_t(0);
        scalar_t* df = row_ptr_mut<scalar_t>(out.dv[m], b, c);
        for_each_elementwise([&](int64_t o, int64_t p, int64_t q) {
          df[q] = static_cast<scalar_t>(coef * (static_cast<acc_t>(f[o]) - static_cast<acc_t>(g[p])));
        }, s, t, out.dv[m]);
      }
      r_all[m * out.B + b] = sum;
    });
    layer_terms(r_all, out.M, out.B, lam, [](int64_t) { return acc_t(1); }, out.losses.data_ptr<acc_t>(),
                out.terms.data_ptr<acc_t>());
  });
  return {out.terms, out.losses, out.grads};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("cwd_loss(Tensor[] student, Tensor[] teacher, Tensor lambdas, float tau, bool with_grad) -> "
        "(Tensor terms, Tensor losses, Tensor[] grads)");
  m.def("fitnets_loss(Tensor[] student, Tensor[] teacher, Tensor lambdas, bool with_grad) -> "
        "(Tensor terms, Tensor losses, Tensor[] grads)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("cwd_loss", &cwd_loss_cpu);
  m.impl("fitnets_loss", &fitnets_loss_cpu);
}

}  // namespace hyperkd
