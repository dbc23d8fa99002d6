// Fused activation-boundary KD on the CPU (LayerKD-HN Eq. 8 and 10, squared hinge of Heo et al.):
// the teacher is a bit mask (1/32 of an fp32 feature); one parallel pass per (layer, sample) row
// sums the hinge and, the loss being a scalar, writes the gradient from the same hinge values.
// Backward has no feature left to read; nothing but the gradients outlives forward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "kd_traversal.h"
#include "layers.h"

namespace hyperkd {
namespace {

void check_masks(at::TensorList student, at::TensorList masks, double margin) {
  TORCH_CHECK(margin >= 0, "margin: expected margin >= 0, got ", margin);
  TORCH_CHECK(masks.size() == student.size(), "masks: expected ", student.size(), " masks, got ",
              masks.size());
  for (size_t m = 0; m < student.size(); ++m) {
    const auto& s = student[m];
    const int64_t bytes = (s.size(1) * s.size(2) * s.size(3) + 7) / 8;
    TORCH_CHECK(masks[m].scalar_type() == at::kByte && masks[m].is_contiguous() &&
                    masks[m].dim() == 2 && masks[m].size(0) == s.size(0) && masks[m].size(1) == bytes,
                "masks[", m, "]: expected a contiguous uint8 ", s.size(0), "×", bytes,
                " packed mask, got ", masks[m].sizes(), " ", masks[m].scalar_type());
  }
}

// The hinge h of one element, ℓ = h² and dℓ/df = 2h: min(f − μ, 0) where ρ = 1, max(f + μ, 0)
// where ρ = 0. Both are computed and blended, without a branch, so the loops over it vectorise.
template <typename acc_t>
inline acc_t hinge(acc_t x, acc_t rho, acc_t mu) {
  return rho * std::min(x - mu, acc_t(0)) + (1 - rho) * std::max(x + mu, acc_t(0));
}

// One sample's mask as one 0/1 value per element (NCHW order) in a per-thread buffer: flat loops
// over it and the feature vectorise, where taking a bit out of the packed mask per element did not.
template <typename acc_t>
const acc_t* unpack_mask(const uint8_t* bits, int64_t n) {
  acc_t* rho = thread_scratch<acc_t>(n);
  for (int64_t e = 0; e < n; ++e) rho[e] = static_cast<acc_t>(mask_bit(bits, e));
  return rho;
}

// One sample's Σ ℓ(f, ρ), ℓ = (f+μ)²[f>−μ ∧ ¬ρ] + (f−μ)²[f≤μ ∧ ρ], and with `df` its gradient
// coef · 2h (df has its own strides) from the same pass.
template <typename scalar_t, typename acc_t>
acc_t hinge_row(const FeatureView& v, const scalar_t* f, const uint8_t* bits, acc_t mu,
                const FeatureView& dv, scalar_t* df, acc_t coef) {
  acc_t sum = 0;
  if (v.sample_contiguous() && (df == nullptr || dv.sample_contiguous())) {
    const int64_t n = v.C * v.HW();
    const acc_t* rho = unpack_mask<acc_t>(bits, n);
    if (df == nullptr) {
#pragma omp simd reduction(+ : sum)
      for (int64_t e = 0; e < n; ++e) {
        const acc_t h = hinge(static_cast<acc_t>(f[e]), rho[e], mu);
        sum += h * h;
      }
      return sum;
    }
    const acc_t two_coef = 2 * coef;
#pragma omp simd reduction(+ : sum)
    for (int64_t e = 0; e < n; ++e) {
      const acc_t h = hinge(static_cast<acc_t>(f[e]), rho[e], mu);
      sum += h * h;
      df[e] = static_cast<scalar_t>(two_coef * h);
    }
    return sum;
  }
  const FeatureView& out = df == nullptr ? v : dv;
  for_each_logical(v, out, [&](int64_t e, int64_t off, int64_t doff) {
    const acc_t h = hinge(static_cast<acc_t>(f[off]), acc_t(mask_bit(bits, e)), mu);
    sum += h * h;
    if (df != nullptr) df[doff] = static_cast<scalar_t>(2 * coef * h);
  });
  return sum;
}

// (λ_m L_m, L_m with L_m = Σ ℓ / B, and with `with_grad` d(Σ_m λ_m L_m)/df_m).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> ab_loss_cpu(
    at::TensorList student, at::TensorList masks, const at::Tensor& lambdas, double margin,
    bool with_grad) {
  check_feature_list(student, "student");
  check_masks(student, masks, margin);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  check_lambdas(lambdas, M, acc);
  const auto views = feature_views(student);
  std::vector<at::Tensor> grads = with_grad ? empty_like_each(student) : std::vector<at::Tensor>{};
  const auto grad_views = feature_views(grads);
  auto opts = student[0].options().dtype(acc);
  at::Tensor rows = at::empty({M, B}, opts), losses = at::empty({M}, opts), terms = at::empty({M}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student[0].scalar_type(), "ab_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* r_all = rows.data_ptr<acc_t>();
    const acc_t* lam = lambdas.data_ptr<acc_t>();
    parallel_for_rows(M, B, [&](int64_t m, int64_t b) {
      const auto& v = views[m];
      const FeatureView& dv = with_grad ? grad_views[m] : v;
      scalar_t* df = with_grad ? static_cast<scalar_t*>(dv.data) + b * dv.sb : nullptr;
      r_all[m * B + b] = hinge_row(v, static_cast<const scalar_t*>(v.data) + b * v.sb,
                                   masks[m].data_ptr<uint8_t>() + b * masks[m].size(1), acc_t(margin),
                                   dv, df, lam[m] / acc_t(B));
    });
    layer_terms(r_all, M, B, lam, [&](int64_t) { return acc_t(1) / acc_t(B); }, losses.data_ptr<acc_t>(),
                terms.data_ptr<acc_t>());
  });
  return {terms, losses, grads};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("ab_loss(Tensor[] student, Tensor[] masks, Tensor lambdas, float margin, bool with_grad) -> "
        "(Tensor terms, Tensor losses, Tensor[] grads)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("ab_loss", &ab_loss_cpu);
}

}  // namespace hyperkd
