// Fused per-channel KD losses on the CPU, each a reduction over the H·W positions of one
// (sample, channel) row of student f and teacher g:
//   CwD (LayerKD-HN Eq. 20–21): KL(softmax(g/τ) ‖ softmax(f/τ)) per row, × τ²/(C·B) per layer;
//   FitNets (Eq. 11): ‖f − g‖₂ per row, summed.
// Forward is one pass per row; only per-row statistics (log-sum-exps, norms) are kept for backward,
// never a softmax or a difference of feature size.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "layers.h"

#if defined(__x86_64__) && defined(__GLIBC__)
// glibc's libmvec has SIMD expf/exp; <math.h> declares them only under -ffast-math, which would
// also relax every other float operation here, so declare them for the `omp simd` loops directly.
extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
}
#endif

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

// Start of each layer's B×C block in the flat per-row statistics.
std::vector<int64_t> row_offsets(at::TensorList feats) {
  std::vector<int64_t> off(feats.size() + 1, 0);
  for (size_t m = 0; m < feats.size(); ++m) off[m + 1] = off[m] + feats[m].size(0) * feats[m].size(1);
  return off;
}

// What both backward passes start from: checked inputs, their strided views, fresh gradients
// with the students' strides, and the per-layer upstream gradients in the accumulation type.
struct PairedBackward {
  int64_t B;
  std::vector<FeatureView> sv, tv, dv;
  std::vector<int64_t> off;
  std::vector<at::Tensor> grads;
  at::Tensor g_layers;
};

PairedBackward paired_backward(const at::Tensor& grad, at::TensorList student, at::TensorList teacher) {
  check_feature_list(student, "student");
  check_teacher_features(student, teacher);
  std::vector<at::Tensor> grads = empty_like_each(student);
  auto dv = feature_views(grads);
  return {student[0].size(0), feature_views(student), feature_views(teacher), std::move(dv),
          row_offsets(student), std::move(grads),
          grad.to(acc_type_of(student[0].scalar_type())).contiguous()};
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

// KL(softmax(g/τ) ‖ softmax(f/τ)) of one channel and both log-sum-exps, in two passes: the maxima,
// then one exp per element of each map. With log p = x/τ − lse and Σ p_t = 1,
// KL = Σ p_t (g − f)/τ − lse_t + lse_s.
template <typename scalar_t, typename acc_t>
acc_t channel_kl(const FeatureView& s, const scalar_t* f, const FeatureView& t, const scalar_t* g,
                 acc_t inv_tau, acc_t& lse_s, acc_t& lse_t) {
  acc_t mx_s = -std::numeric_limits<acc_t>::infinity(), mx_t = mx_s;
  acc_t z_s = 0, z_t = 0, weighted = 0;
  auto take_max = [&](int64_t o, int64_t p) {
    mx_s = std::max(mx_s, static_cast<acc_t>(f[o]) * inv_tau);
    mx_t = std::max(mx_t, static_cast<acc_t>(g[p]) * inv_tau);
  };
  auto add_exps = [&](int64_t o, int64_t p) {
    const acc_t fs = static_cast<acc_t>(f[o]) * inv_tau, gt = static_cast<acc_t>(g[p]) * inv_tau;
    const acc_t e_t = std::exp(gt - mx_t);
    z_s += std::exp(fs - mx_s);
    z_t += e_t;
    weighted += e_t * (gt - fs);
  };
  if (s.plane_contiguous() && t.plane_contiguous()) {
    // The reductions must be declared for the compiler to vectorise them (and the exps).
#pragma omp simd reduction(max : mx_s, mx_t)
    for (int64_t i = 0; i < s.HW(); ++i) take_max(i, i);
#pragma omp simd reduction(+ : z_s, z_t, weighted)
    for (int64_t i = 0; i < s.HW(); ++i) add_exps(i, i);
  } else {
    for_each_position(take_max, s, t);
    for_each_position(add_exps, s, t);
  }
  lse_s = mx_s + std::log(z_s);
  lse_t = mx_t + std::log(z_t);
  return weighted / z_t - lse_t + lse_s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cwd_loss_cpu(at::TensorList student, at::TensorList teacher,
                                                            double tau) {
  check_feature_list(student, "student");
  check_teacher_features(student, teacher);
  TORCH_CHECK(tau > 0, "tau: expected tau > 0, got ", tau);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  const auto sv = feature_views(student), tv = feature_views(teacher);
  const auto off = row_offsets(student);
  auto opts = student[0].options().dtype(acc);
  at::Tensor lse_s = at::empty({off[M]}, opts), lse_t = at::empty({off[M]}, opts);
  at::Tensor rows = at::empty({M, B}, opts), losses = at::empty({M}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "cwd_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = acc_t(1) / acc_t(tau);
    acc_t *ls = lse_s.data_ptr<acc_t>(), *lt = lse_t.data_ptr<acc_t>(), *r_all = rows.data_ptr<acc_t>();
    parallel_for_rows(M, B, [&](int64_t m, int64_t b) {
      const auto &s = sv[m], &t = tv[m];
      acc_t kl_sum = 0;
      for (int64_t c = 0; c < s.C; ++c) {
        const scalar_t* f = row_ptr<scalar_t>(s, b, c);
        const scalar_t* g = row_ptr<scalar_t>(t, b, c);
        const int64_t k = off[m] + b * s.C + c;
        kl_sum += channel_kl(s, f, t, g, inv_tau, ls[k], lt[k]);
      }
      r_all[m * B + b] = kl_sum;
    });
    acc_t* out = losses.data_ptr<acc_t>();
    for (int64_t m = 0; m < M; ++m) {
      acc_t sum = 0;
      for (int64_t b = 0; b < B; ++b) sum += r_all[m * B + b];
      out[m] = sum * acc_t(tau * tau) / acc_t(sv[m].C * B);
    }
  });
  return {losses, lse_s, lse_t};
}

std::vector<at::Tensor> cwd_loss_backward_cpu(const at::Tensor& grad, at::TensorList student,
                                              at::TensorList teacher, const at::Tensor& lse_s,
                                              const at::Tensor& lse_t, double tau) {
  const auto [B, sv, tv, dv, off, grads, g_layers] = paired_backward(grad, student, teacher);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "cwd_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_tau = acc_t(1) / acc_t(tau);
    const acc_t *ls = lse_s.data_ptr<acc_t>(), *lt = lse_t.data_ptr<acc_t>(), *g = g_layers.data_ptr<acc_t>();
    parallel_for_rows(student.size(), B, [&](int64_t m, int64_t b) {
      const auto &s = sv[m], &t = tv[m], &d = dv[m];
      // dL/df = g_m · τ²/(C·B) · (p_s − p_t)/τ.
      const acc_t coef = g[m] * acc_t(tau) / acc_t(s.C * B);
      for (int64_t c = 0; c < s.C; ++c) {
        const scalar_t* f = row_ptr<scalar_t>(s, b, c);
        const scalar_t* gt = row_ptr<scalar_t>(t, b, c);
        scalar_t* df = row_ptr_mut<scalar_t>(d, b, c);
        const int64_t k = off[m] + b * s.C + c;
        for_each_elementwise([&](int64_t o, int64_t p, int64_t q) {
          const acc_t ps = std::exp(static_cast<acc_t>(f[o]) * inv_tau - ls[k]);
          const acc_t pt = std::exp(static_cast<acc_t>(gt[p]) * inv_tau - lt[k]);
          df[q] = static_cast<scalar_t>(coef * (ps - pt));
        }, s, t, d);
      }
    });
  });
  return grads;
}

// -------------------------------------------------------------------------------------- FitNets

std::tuple<at::Tensor, at::Tensor> fitnets_loss_cpu(at::TensorList student, at::TensorList teacher) {
  check_feature_list(student, "student");
  check_teacher_features(student, teacher);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  const auto sv = feature_views(student), tv = feature_views(teacher);
  const auto off = row_offsets(student);
  auto opts = student[0].options().dtype(acc);
  at::Tensor norms = at::empty({off[M]}, opts), rows = at::empty({M, B}, opts), losses = at::empty({M}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "fitnets_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t *n = norms.data_ptr<acc_t>(), *r_all = rows.data_ptr<acc_t>();
    parallel_for_rows(M, B, [&](int64_t m, int64_t b) {
      const auto &s = sv[m], &t = tv[m];
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
        n[off[m] + b * s.C + c] = std::sqrt(sq);
        sum += std::sqrt(sq);
      }
      r_all[m * B + b] = sum;
    });
    acc_t* out = losses.data_ptr<acc_t>();
    for (int64_t m = 0; m < M; ++m) {
      acc_t sum = 0;
      for (int64_t b = 0; b < B; ++b) sum += r_all[m * B + b];
      out[m] = sum;
    }
  });
  return {losses, norms};
}

std::vector<at::Tensor> fitnets_loss_backward_cpu(const at::Tensor& grad, at::TensorList student,
                                                  at::TensorList teacher, const at::Tensor& norms) {
  const auto [B, sv, tv, dv, off, grads, g_layers] = paired_backward(grad, student, teacher);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "fitnets_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *n = norms.data_ptr<acc_t>(), *g = g_layers.data_ptr<acc_t>();
    parallel_for_rows(student.size(), B, [&](int64_t m, int64_t b) {
      const auto &s = sv[m], &t = tv[m], &d = dv[m];
      for (int64_t c = 0; c < s.C; ++c) {
        const scalar_t* f = row_ptr<scalar_t>(s, b, c);
        const scalar_t* gt = row_ptr<scalar_t>(t, b, c);
        scalar_t* df = row_ptr_mut<scalar_t>(d, b, c);
        const acc_t norm = n[off[m] + b * s.C + c];
        // d‖f − g‖/df = (f − g)/‖f − g‖, taken as 0 where f = g on the whole row.
        const acc_t coef = norm > 0 ? g[m] / norm : acc_t(0);
        for_each_elementwise([&](int64_t o, int64_t p, int64_t q) {
          df[q] = static_cast<scalar_t>(coef * (static_cast<acc_t>(f[o]) - static_cast<acc_t>(gt[p])));
        }, s, t, d);
      }
    });
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("cwd_loss(Tensor[] student, Tensor[] teacher, float tau) -> (Tensor losses, Tensor lse_s, Tensor lse_t)");
  m.def("cwd_loss_backward(Tensor grad, Tensor[] student, Tensor[] teacher, Tensor lse_s, Tensor lse_t, "
        "float tau) -> Tensor[]");
  m.def("fitnets_loss(Tensor[] student, Tensor[] teacher) -> (Tensor losses, Tensor norms)");
  m.def("fitnets_loss_backward(Tensor grad, Tensor[] student, Tensor[] teacher, Tensor norms) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("cwd_loss", &cwd_loss_cpu);
  m.impl("cwd_loss_backward", &cwd_loss_backward_cpu);
  m.impl("fitnets_loss", &fitnets_loss_cpu);
  m.impl("fitnets_loss_backward", &fitnets_loss_backward_cpu);
}

}  // namespace hyperkd
