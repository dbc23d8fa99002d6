// Fused relational KD on the CPU, everything computed from per-layer Gram matrices G = Q·Qᵀ (B×B,
// Q = the B×D flattened feature): similarity preservation (LayerKD-HN Eq. 14–18) and RKD distance
// and angle (Eq. 22–27). Distances and angles come from G, never from a B×B×D difference tensor:
//   d_ij = sqrt(G_ii + G_jj − 2 G_ij),  cos∠(i, j, k) = (G_ik − G_ij − G_jk + G_jj) / (d_ij d_kj).
// Backward turns dL/dG into dL/dQ = (dG + dGᵀ)·Q, so only the B×B Grams are kept for it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "gram.h"
#include "layers.h"

namespace hyperkd {
namespace {

constexpr double kNormEps = 1e-12;  // F.normalize's default, as in Tung & Mori's SP

// Q as a B×D matrix in the feature's memory order (the Gram does not depend on the order of D),
// a view for NCHW and channels_last inputs, in the accumulation dtype.
at::Tensor rows_of(const at::Tensor& f) {
  const auto acc = acc_type_of(f.scalar_type());
  at::Tensor v = f.is_contiguous() ? f
                 : f.is_contiguous(at::MemoryFormat::ChannelsLast) ? f.permute({0, 2, 3, 1})
                                                                   : f.contiguous();
  return v.reshape({f.size(0), -1}).to(acc);
}

// The inverse of rows_of for a gradient: dQ (B×D) back in the layout and dtype of f.
at::Tensor unrows(const at::Tensor& dq, const at::Tensor& f) {
  if (!f.is_contiguous() && f.is_contiguous(at::MemoryFormat::ChannelsLast))
    return dq.view({f.size(0), f.size(2), f.size(3), f.size(1)}).permute({0, 3, 1, 2}).to(f.scalar_type());
  return dq.view(f.sizes()).to(f.scalar_type());
}

// G_m = Q_m·Q_mᵀ for every layer, in one parallel pass (csrc/cpu/gram.h).
std::vector<at::Tensor> grams_of(at::TensorList feats) {
  const int64_t B = feats[0].size(0);
  std::vector<at::Tensor> rows, grams;
  for (const auto& f : feats) {
    rows.push_back(rows_of(f));
    grams.push_back(at::empty({B, B}, rows.back().options()));
  }
  AT_DISPATCH_FLOATING_TYPES(rows[0].scalar_type(), "gram", [&] {
    gram_layers(pointers<const scalar_t*>(rows), widths(rows), B, pointers<scalar_t*>(grams));
  });
  return grams;
}

// dL/dQ_m = (dG_m + dG_mᵀ)·Q_m from dL/dG_m (the raw Grams) for every layer, in f_m's layout.
std::vector<at::Tensor> grams_backward(const std::vector<at::Tensor>& dG, at::TensorList feats) {
  std::vector<at::Tensor> rows, sym, dq, grads;
  for (size_t m = 0; m < feats.size(); ++m) {
    rows.push_back(rows_of(feats[m]));
    sym.push_back((dG[m] + dG[m].t()).contiguous());
    dq.push_back(at::empty_like(rows.back()));
  }
  AT_DISPATCH_FLOATING_TYPES(rows[0].scalar_type(), "gram_backward", [&] {
    gram_backward_layers(pointers<const scalar_t*>(sym), pointers<const scalar_t*>(rows), widths(rows),
                         feats[0].size(0), pointers<scalar_t*>(dq));
  });
  for (size_t m = 0; m < feats.size(); ++m) grads.push_back(unrows(dq[m], feats[m]));
  return grads;
}

void check_grams(at::TensorList student, at::TensorList teacher, const char* name) {
  TORCH_CHECK(teacher.size() == student.size(), name, ": expected ", student.size(),
              " matrices, got ", teacher.size());
  const int64_t B = student[0].size(0);
  const auto acc = acc_type_of(student[0].scalar_type());
  for (size_t m = 0; m < teacher.size(); ++m)
    TORCH_CHECK(teacher[m].dim() == 2 && teacher[m].size(0) == B && teacher[m].size(1) == B &&
                    teacher[m].scalar_type() == acc && teacher[m].is_contiguous(),
                name, "[", m, "]: expected a contiguous ", B, "×", B, " ", acc, " matrix, got ",
                teacher[m].sizes(), " ", teacher[m].scalar_type());
}

// ---------------------------------------------------------------- similarity preservation

// Row-normalised Gram (Eq. 17) from the raw Gram, and the row norms.
template <typename acc_t>
void normalise_rows(const acc_t* g, int64_t B, acc_t* out, acc_t* norms) {
  for (int64_t i = 0; i < B; ++i) {
    acc_t sq = 0;
    for (int64_t j = 0; j < B; ++j) sq += g[i * B + j] * g[i * B + j];
    norms[i] = std::sqrt(sq);
    const acc_t inv = acc_t(1) / std::max(norms[i], acc_t(kNormEps));
    for (int64_t j = 0; j < B; ++j) out[i * B + j] = g[i * B + j] * inv;
  }
}

std::vector<at::Tensor> gram_cpu(at::TensorList feats) {
  check_feature_list(feats, "feats");
  return grams_of(feats);
}

// L_m = ‖G_s − G_t‖²_F / B² (Eq. 18 divided by B², as Tung & Mori); returns (losses, raw Grams).
std::tuple<at::Tensor, std::vector<at::Tensor>> sp_loss_cpu(at::TensorList student, at::TensorList teacher) {
  check_feature_list(student, "student");
  check_grams(student, teacher, "teacher");
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  at::Tensor losses = at::empty({M}, student[0].options().dtype(acc));
  std::vector<at::Tensor> grams = grams_of(student);
  AT_DISPATCH_FLOATING_TYPES(acc, "sp_loss", [&] {
    std::vector<scalar_t> g(B * B), norms(B);
    for (int64_t m = 0; m < M; ++m) {
      normalise_rows(grams[m].data_ptr<scalar_t>(), B, g.data(), norms.data());
      const scalar_t* t = teacher[m].data_ptr<scalar_t>();
      scalar_t sum = 0;
      for (int64_t k = 0; k < B * B; ++k) sum += (g[k] - t[k]) * (g[k] - t[k]);
      losses.data_ptr<scalar_t>()[m] = sum / scalar_t(B * B);
    }
  });
  return {losses, grams};
}

std::vector<at::Tensor> sp_loss_backward_cpu(const at::Tensor& grad, at::TensorList student,
                                             at::TensorList teacher, at::TensorList grams) {
  check_feature_list(student, "student");
  check_grams(student, teacher, "teacher");
  check_grams(student, grams, "grams");
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  const at::Tensor g_layers = grad.to(acc).contiguous();
  std::vector<at::Tensor> dGs;
  AT_DISPATCH_FLOATING_TYPES(acc, "sp_loss_backward", [&] {
    std::vector<scalar_t> g(B * B), norms(B);
    for (int64_t m = 0; m < M; ++m) {
      normalise_rows(grams[m].data_ptr<scalar_t>(), B, g.data(), norms.data());
      const scalar_t* t = teacher[m].data_ptr<scalar_t>();
      const scalar_t coef = 2 * g_layers.data_ptr<scalar_t>()[m] / scalar_t(B * B);
      at::Tensor dG = at::empty({B, B}, grams[m].options());
      scalar_t* d = dG.data_ptr<scalar_t>();
      // Through the row normalisation: (dg − g⟨g, dg⟩)/‖G̃_i‖, or dg/eps where it was clamped.
      for (int64_t i = 0; i < B; ++i) {
        scalar_t dot = 0;
        for (int64_t j = 0; j < B; ++j) {
          d[i * B + j] = coef * (g[i * B + j] - t[i * B + j]);
          dot += d[i * B + j] * g[i * B + j];
        }
        const bool clamped = !(norms[i] > scalar_t(kNormEps));
        for (int64_t j = 0; j < B; ++j)
          d[i * B + j] = clamped ? d[i * B + j] / scalar_t(kNormEps)
                                 : (d[i * B + j] - g[i * B + j] * dot) / norms[i];
      }
      dGs.push_back(dG);
    }
  });
  return grams_backward(dGs, student);
}

// ---------------------------------------------------------------- relational KD (distance, angle)

template <typename acc_t>
inline acc_t huber(acc_t x) { const acc_t a = std::abs(x); return a <= 1 ? acc_t(0.5) * x * x : a - acc_t(0.5); }

template <typename acc_t>
inline acc_t huber_grad(acc_t x) { return std::clamp(x, acc_t(-1), acc_t(1)); }

// Pairwise distances from a Gram matrix, symmetric by construction (zero on the diagonal and
// where rounding makes d² ≤ 0), and their mean over the B(B − 1) pairs i ≠ j (Eq. 24).
template <typename acc_t>
acc_t distances(const acc_t* G, int64_t B, acc_t* d) {
  acc_t sum = 0;
  for (int64_t i = 0; i < B; ++i) {
    d[i * B + i] = 0;
    for (int64_t j = i + 1; j < B; ++j) {
      const acc_t sq = G[i * B + i] + G[j * B + j] - 2 * G[i * B + j];
      const acc_t v = sq <= 0 ? acc_t(0) : std::sqrt(sq);
      d[i * B + j] = d[j * B + i] = v;
      sum += 2 * v;
    }
  }
  return sum / acc_t(B * (B - 1));
}

// Per-layer geometry of one net: the Gram, its distances, their mean, and the inverse distances,
// zero where d = 0: multiplying by them zeroes the degenerate triplets (d_ij = 0 or d_kj = 0, which
// includes i = j and k = j) without a branch, as Park et al.'s normalised zero vector does.
template <typename acc_t>
struct Geometry {
  const acc_t* G;
  std::vector<acc_t> d, inv;
  acc_t mean;
  Geometry(const acc_t* g, int64_t B) : G(g), d(B * B), inv(B * B) {
    mean = distances(g, B, d.data());
    for (int64_t k = 0; k < B * B; ++k) inv[k] = d[k] > 0 ? acc_t(1) / d[k] : acc_t(0);
  }
};

// cos∠(i, j, k) at anchor j for every k, from rows of the Gram (contiguous, so the loop
// vectorises): (G_ik − G_jk + G_jj − G_ij) / (d_ij d_jk).
template <typename acc_t>
inline void cosines(const Geometry<acc_t>& g, int64_t B, int64_t i, int64_t j, acc_t* out) {
  const acc_t* Gi = g.G + i * B;
  const acc_t* Gj = g.G + j * B;
  const acc_t* inv_j = g.inv.data() + j * B;
  const acc_t base = g.G[j * B + j] - g.G[i * B + j], inv_ij = g.inv[i * B + j];
  for (int64_t k = 0; k < B; ++k) out[k] = (Gi[k] - Gj[k] + base) * inv_ij * inv_j[k];
}

// L_D = Σ_{i≠j} huber(d_s/μ_s − d_t/μ_t) / B² (Eq. 25, Park et al.'s mean over the B² matrix).
template <typename acc_t>
acc_t distance_loss(const Geometry<acc_t>& s, const Geometry<acc_t>& t, int64_t B) {
  acc_t sum = 0;
  for (int64_t k = 0; k < B * B; ++k) sum += huber(s.d[k] / s.mean - t.d[k] / t.mean);
  return sum / acc_t(B * B);
}

// L_A = Σ_{i,j,k} huber(cos_s − cos_t) / B³ (Eq. 27, Park et al.'s mean), parallel over anchors.
template <typename acc_t>
acc_t angle_loss(const Geometry<acc_t>& s, const Geometry<acc_t>& t, int64_t B) {
  return at::parallel_reduce(0, B, 1, acc_t(0), [&](int64_t begin, int64_t end, acc_t sum) {
    std::vector<acc_t> cs(B), ct(B);
    for (int64_t j = begin; j < end; ++j)
      for (int64_t i = 0; i < B; ++i) {
        cosines(s, B, i, j, cs.data());
        cosines(t, B, i, j, ct.data());
        for (int64_t k = 0; k < B; ++k) sum += huber(cs[k] - ct[k]);
      }
    return sum;
  }, std::plus<acc_t>()) / acc_t(B * B * B);
}

// dL_D/dG (scaled by `scale`) added to dG.
template <typename acc_t>
void distance_loss_backward(const Geometry<acc_t>& s, const Geometry<acc_t>& t, int64_t B, acc_t scale,
                            acc_t* dG) {
  // ψ = d/μ with μ = Σd/P: dL/dd_ij = w_ij/μ − Σ_kl w_kl d_kl/(μ² P).
  const acc_t P = acc_t(B * (B - 1));
  std::vector<acc_t> dd(B * B);
  acc_t wd = 0;
  for (int64_t k = 0; k < B * B; ++k) {
    dd[k] = scale * huber_grad(s.d[k] / s.mean - t.d[k] / t.mean) / acc_t(B * B);
    wd += dd[k] * s.d[k];
  }
  for (int64_t k = 0; k < B * B; ++k)
    dd[k] = (k / B == k % B) ? acc_t(0) : dd[k] / s.mean - wd / (s.mean * s.mean * P);
  distance_backward(s.d.data(), dd.data(), B, dG);
}

// dL_A/dG (scaled by `scale`) added to dG; anchors are split among threads, each with its own
// dG and dd accumulators, summed at the end.
template <typename acc_t>
void angle_loss_backward(const Geometry<acc_t>& s, const Geometry<acc_t>& t, int64_t B, acc_t scale,
                         acc_t* dG) {
  const int64_t chunks = std::min<int64_t>(at::get_num_threads(), B);
  std::vector<std::vector<acc_t>> dG_part(chunks, std::vector<acc_t>(B * B, 0));
  std::vector<std::vector<acc_t>> dd_part(chunks, std::vector<acc_t>(B * B, 0));
  const acc_t w0 = scale / acc_t(B * B * B);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> cs(B), ct(B);
    for (int64_t c = c0; c < c1; ++c) {
      acc_t* g = dG_part[c].data();
      acc_t* dd = dd_part[c].data();
      for (int64_t j = c * B / chunks; j < (c + 1) * B / chunks; ++j) {
        const acc_t* inv_j = s.inv.data() + j * B;
        for (int64_t i = 0; i < B; ++i) {
          const acc_t inv_ij = s.inv[i * B + j];
          if (inv_ij == 0) continue;  // every triplet (i, j, ·) is degenerate
          cosines(s, B, i, j, cs.data());
          cosines(t, B, i, j, ct.data());
          // cos = N·(1/d_ij)(1/d_jk), N = G_ik − G_ij − G_jk + G_jj: dN spreads a = w/(d_ij d_jk) over
          // four Gram entries, and d(1/d) gives −w·cos/d to each distance (d_jk stored at [j, k]).
          acc_t* gi = g + i * B;
          acc_t* gj = g + j * B;
          acc_t* dd_j = dd + j * B;
          acc_t sum_a = 0, sum_wc = 0;
          for (int64_t k = 0; k < B; ++k) {
            const acc_t w = w0 * huber_grad(cs[k] - ct[k]);
            const acc_t a = w * inv_ij * inv_j[k];
            gi[k] += a;
            gj[k] -= a;
            sum_a += a;
            sum_wc += w * cs[k];
            dd_j[k] -= w * cs[k] * inv_j[k];
          }
          g[i * B + j] -= sum_a;
          g[j * B + j] += sum_a;
          dd[i * B + j] -= sum_wc * inv_ij;
        }
      }
    }
  });
  std::vector<acc_t> dd(B * B, 0);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t k = 0; k < B * B; ++k) {
      dG[k] += dG_part[c][k];
      dd[k] += dd_part[c][k];
    }
  distance_backward(s.d.data(), dd.data(), B, dG);
}

void check_rkd(at::TensorList student, double w_dist, double w_angle) {
  TORCH_CHECK(student[0].size(0) >= 2, "student: RKD needs a batch of at least 2 (distances between "
              "samples are undefined for batch size 1), got ", student[0].size(0));
  TORCH_CHECK(w_dist >= 0 && w_angle >= 0, "w_dist, w_angle: expected weights >= 0");
}

// L_m = w_dist·L_D + w_angle·L_A per layer; returns (losses, raw student Grams).
std::tuple<at::Tensor, std::vector<at::Tensor>> rkd_loss_cpu(at::TensorList student, at::TensorList teacher,
                                                             double w_dist, double w_angle) {
  check_feature_list(student, "student");
  check_grams(student, teacher, "teacher");
  check_rkd(student, w_dist, w_angle);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  at::Tensor losses = at::empty({M}, student[0].options().dtype(acc));
  std::vector<at::Tensor> grams = grams_of(student);
  AT_DISPATCH_FLOATING_TYPES(acc, "rkd_loss", [&] {
    for (int64_t m = 0; m < M; ++m) {
      const Geometry<scalar_t> s(grams[m].data_ptr<scalar_t>(), B), t(teacher[m].data_ptr<scalar_t>(), B);
      scalar_t loss = 0;
      if (w_dist > 0) loss += scalar_t(w_dist) * distance_loss(s, t, B);
      if (w_angle > 0) loss += scalar_t(w_angle) * angle_loss(s, t, B);
      losses.data_ptr<scalar_t>()[m] = loss;
    }
  });
  return {losses, grams};
}

std::vector<at::Tensor> rkd_loss_backward_cpu(const at::Tensor& grad, at::TensorList student,
                                              at::TensorList teacher, at::TensorList grams,
                                              double w_dist, double w_angle) {
  check_feature_list(student, "student");
  check_grams(student, teacher, "teacher");
  check_grams(student, grams, "grams");
  check_rkd(student, w_dist, w_angle);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  const at::Tensor g_layers = grad.to(acc).contiguous();
  std::vector<at::Tensor> dGs;
  AT_DISPATCH_FLOATING_TYPES(acc, "rkd_loss_backward", [&] {
    for (int64_t m = 0; m < M; ++m) {
      const Geometry<scalar_t> s(grams[m].data_ptr<scalar_t>(), B), t(teacher[m].data_ptr<scalar_t>(), B);
      at::Tensor dG = at::zeros({B, B}, grams[m].options());
      const scalar_t g = g_layers.data_ptr<scalar_t>()[m];
      if (w_dist > 0) distance_loss_backward(s, t, B, g * scalar_t(w_dist), dG.data_ptr<scalar_t>());
      if (w_angle > 0) angle_loss_backward(s, t, B, g * scalar_t(w_angle), dG.data_ptr<scalar_t>());
      dGs.push_back(dG);
    }
  });
  return grams_backward(dGs, student);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("gram(Tensor[] feats) -> Tensor[]");
  m.def("sp_loss(Tensor[] student, Tensor[] teacher) -> (Tensor losses, Tensor[] grams)");
  m.def("sp_loss_backward(Tensor grad, Tensor[] student, Tensor[] teacher, Tensor[] grams) -> Tensor[]");
  m.def("rkd_loss(Tensor[] student, Tensor[] teacher, float w_dist, float w_angle) "
        "-> (Tensor losses, Tensor[] grams)");
  m.def("rkd_loss_backward(Tensor grad, Tensor[] student, Tensor[] teacher, Tensor[] grams, "
        "float w_dist, float w_angle) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("sp_loss", &sp_loss_cpu);
  m.impl("sp_loss_backward", &sp_loss_backward_cpu);
  m.impl("rkd_loss", &rkd_loss_cpu);
  m.impl("rkd_loss_backward", &rkd_loss_backward_cpu);
}

}  // namespace hyperkd
