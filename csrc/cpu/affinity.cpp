// Fused modular affinity KD on the CPU (mAKD, Li & Maki Eq. 3–14): L(f(g(z_S)), f(g(z_T))) per
// layer, z the B×D flattened feature, g one of four affinities, f one of five normalisations of the
// B×B matrix, L one of four losses.
//
// The feature-sized passes are two products over the batch's pairs:
//   IP, CS, L2: the Gram G = Q·Qᵀ (gram.h), from which IP = G, CS = G_ij / (n_i n_j) with
//     n_i = sqrt(G_ii), L2 = sqrt(G_ii + G_jj − 2 G_ij); backward is dQ = (dG + dGᵀ)·Q.
//   L1: no product form. Forward sums |q_i − q_j| over register tiles of pairs; backward
//     dQ_i = Σ_j S_ij sign(q_i − q_j), S = dA + dAᵀ, recomputes the signs tile by tile from
//     column panels of Q, so nothing of size B×B×D exists (memory: a panel per thread).
// Everything else (affinity from the Gram, normalisation, loss and all their gradients) is an
// epilogue over B×B matrices.
//
// The autograd of affinity_loss is registered here, in C++, rather than through
// torch.library.register_autograd: at pooled widths (B = 128, D = 64) the Python wrapper (pytree
// flattening of the list arguments, a Python backward) cost ~0.2 ms a step, more than the kernels.
// When a student feature needs its gradient, the forward is affinity_loss_with_grad, which also
// computes that gradient (for an incoming gradient of ones) while the B×B matrices are at hand;
// autograd keeps only those gradients (B×D per layer) and the backward scales them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "gram.h"
#include "layers.h"
#include "simd_math.h"

namespace hyperkd {
namespace {

constexpr double kEps = 1e-12;  // clamp of every divisor, F.normalize's default (the reference's)

enum class Aff { L1, L2, IP, CS };
enum class Norm { L1, L2, Avg, Max, None };
enum class Loss { L1, L2, SL1, KL };

template <typename E, size_t N>
E parse(c10::string_view text, const std::array<const char*, N>& names, const char* what) {
  std::string valid;
  for (size_t k = 0; k < N; ++k) {
    if (std::string_view(text.data(), text.size()) == names[k]) return static_cast<E>(k);
    valid += (k ? ", " : "") + std::string(names[k]);
  }
  TORCH_CHECK(false, what, ": expected one of ", valid, ", got '", std::string(text.data(), text.size()), "'");
}

struct Variant {
  Aff aff;
  Norm norm;
  Loss loss;
};

Variant variant(c10::string_view aff, c10::string_view norm, c10::string_view loss = "l2") {
  return {parse<Aff>(aff, std::array{"l1", "l2", "ip", "cs"}, "aff"),
          parse<Norm>(norm, std::array{"l1", "l2", "avg", "max", "none"}, "norm"),
          parse<Loss>(loss, std::array{"l1", "l2", "sl1", "kl"}, "loss")};
}

// ---------------------------------------------------------------- inputs

// B×D_m features of one batch size and dtype, B ≥ 2 (no pairs otherwise).
void check_rows(at::TensorList feats, const char* name) {
  TORCH_CHECK(!feats.empty(), name, ": expected a non-empty list of B×D features");
  for (size_t m = 0; m < feats.size(); ++m) {
    const auto& f = feats[m];
    TORCH_CHECK(f.dim() == 2 && f.size(1) > 0, name, "[", m, "]: expected a B×D matrix, got ", f.sizes());
    TORCH_CHECK(f.size(0) == feats[0].size(0) && f.scalar_type() == feats[0].scalar_type(), name, "[", m,
                "]: batch and dtype must match layer 0's");
  }
  TORCH_CHECK(feats[0].size(0) >= 2, name, ": affinity KD relates the samples of a batch, so it needs a "
              "batch of at least 2, got ", feats[0].size(0));
}

void check_matrices(at::TensorList mats, int64_t M, int64_t B, at::ScalarType acc, const char* name) {
  TORCH_CHECK(int64_t(mats.size()) == M, name, ": expected ", M, " matrices, got ", mats.size());
  for (size_t m = 0; m < mats.size(); ++m)
    TORCH_CHECK(mats[m].dim() == 2 && mats[m].size(0) == B && mats[m].size(1) == B &&
                    mats[m].scalar_type() == acc && mats[m].is_contiguous(),
                name, "[", m, "]: expected a contiguous ", B, "×", B, " ", acc, " matrix, got ",
                mats[m].sizes(), " ", mats[m].scalar_type());
}

std::vector<at::Tensor> rows_in_acc(at::TensorList feats) {
  std::vector<at::Tensor> rows;
  for (const auto& f : feats) rows.push_back(f.to(acc_type_of(f.scalar_type())).contiguous());
  return rows;
}

// ---------------------------------------------------------------- L1 distances, tiled

// 2×4 tiles: 8 accumulators, 2 + 1 operands and the difference fit AVX2's 16 registers.
constexpr int kL1Rows = 2;

template <typename V>
inline V vabs(V d) { return d < 0 ? -d : d; }

// The L1 distance's p of gram.h's pairwise column sums: |Q[i, k] − Q[j, k]|.
struct AbsDifference {
  template <typename S>
  static typename S::V step(typename S::V acc, typename S::V a, typename S::V b) { return acc + vabs(a - b); }
  template <typename T>
  static T scalar(T a, T b) { return std::abs(a - b); }
};

// The upper tiles of the L1 distances over columns k0..k1, in chunks whose B rows stay in L2.
template <typename T>
void l1_upper(const T* Q, int64_t B, int64_t ld, int64_t k0, int64_t k1, T* out) {
  gram_detail::pair_upper<T, AbsDifference, kL1Rows>(Q, B, ld, k0, k1, out, B, 256 << 10);
}

// dQ[i, c0 + k] = Σ_j S_ij sign(P[i, k] − P[j, k]) for k < n over a packed panel P (rows ld apart,
// zero padded to whole vectors), 4 rows i at a time; S_ii is 0. sign(0) = 0, as the subgradient
// of |x| that torch uses: equal features (ReLU zeros) give nothing.
template <typename T>
void l1_backward_panel(const T* S, const T* P, int64_t ld, int64_t B, int64_t n, T* dQ, int64_t D) {
  using Sd = Simd<T>;
  using V = typename Sd::V;
  using VI = decltype(V{} < V{});
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  constexpr int TI = 4;
  const VI sign_bit = VI{} + std::numeric_limits<I>::min();
  T lanes[TI][Sd::L];
  for (int64_t i0 = 0; i0 < B; i0 += TI) {
    const int ti = int(std::min<int64_t>(TI, B - i0));
    for (int64_t k = 0; k < n; k += Sd::L) {
      V a[TI], acc[TI] = {};
      for (int i = 0; i < TI; ++i) a[i] = Sd::load(P + std::min<int64_t>(i0 + i, B - 1) * ld + k);
      for (int64_t j = 0; j < B; ++j) {
        const V b = Sd::load(P + j * ld + k);
        #pragma GCC unroll 4
        for (int i = 0; i < TI; ++i) {
          const V d = a[i] - b;
          const V s = Sd::broadcast(S + std::min<int64_t>(i0 + i, B - 1) * B + j);
          // S_ij·sign(d): S_ij with d's sign bit xor-ed in, masked off where d = 0.
          acc[i] += (V)((((VI)s) ^ ((VI)d & sign_bit)) & (VI)(d != 0));
        }
      }
      const int64_t w = std::min<int64_t>(Sd::L, n - k);
      for (int i = 0; i < ti; ++i) {
        Sd::store(lanes[i], acc[i]);
        std::copy_n(lanes[i], w, dQ + (i0 + i) * D + k);
      }
    }
  }
}

// dQ_m = the L1 backward of every layer; the threads (at most max_threads) split each layer's
// columns into panels.
template <typename T>
void l1_backward_layers(const std::vector<const T*>& Sm, const std::vector<const T*>& Q,
                        const std::vector<int64_t>& D, int64_t B, const std::vector<T*>& out,
                        int64_t max_threads) {
  const int64_t M = Q.size(), threads = gram_detail::thread_count(max_threads);
  // A panel of B rows fits L1 (32 KiB) so the j loop reads it from there for every row tile.
  const int64_t L = Simd<T>::L;
  const int64_t panel = std::max<int64_t>(1, (32 << 10) / (B * int64_t(sizeof(T)) * L)) * L;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    const int64_t ld = padded_ld<T>(panel);
    std::vector<T> packed(B * ld, T(0));
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t m = 0; m < M; ++m) {
        const auto [k0, k1] = gram_detail::column_share<T>(D[m], t, threads);
        for (int64_t c0 = k0; c0 < k1; c0 += panel) {
          const int64_t n = std::min(k1, c0 + panel) - c0;
          for (int64_t j = 0; j < B; ++j) {
            std::copy_n(Q[m] + j * D[m] + c0, n, packed.data() + j * ld);
            std::fill(packed.data() + j * ld + n, packed.data() + j * ld + (n + L - 1) / L * L, T(0));
          }
          l1_backward_panel(Sm[m], packed.data(), ld, B, n, out[m] + c0, D[m]);
        }
      }
  });
}

// ---------------------------------------------------------------- the B×B epilogue

// The pair elements (B²·D multiply-adds) a feature pass gives each thread. Below that a parallel
// region's start and barrier cost more than the pass on a loaded machine: B = 128, D = 64 ran
// 100x slower on two threads of a loaded 2-core machine than on one, and at one thread per 2^20,
// B = 256, D = 64 (4·2^20) took 24 ms on two threads against 0.6–1.4 ms on one.
constexpr int64_t kPairsPerThread = int64_t(1) << 22;

int64_t threads_for(const std::vector<at::Tensor>& rows) {
  int64_t work = 0;
  for (const auto& r : rows) work += r.size(0) * r.size(0) * r.size(1);
  return std::max<int64_t>(1, work / kPairsPerThread);
}

// Below this width a layer's Gram is a tile_gemm of Q by its packed transpose (gram_by_rows):
// gram_upper's 3×4 tiles each end in 12 horizontal vector sums, which at D = 64 cost more than
// their D/L multiply steps (B = 128: the whole Gram took twice MKL's time).
constexpr int64_t kSmallWidth = 256;

// G = Q·Qᵀ (both triangles) for a B×D Q; the threads split G's rows, kPairsPerThread each.
template <typename T>
void gram_by_rows(const T* Q, int64_t B, int64_t D, T* G) {
  const int64_t ld = padded_ld<T>(B);
  std::vector<T> Qt(D * ld);
  pack_rows(Q, D, B, 1, D, Qt.data(), ld);
  const int64_t grain = std::max<int64_t>(1, kPairsPerThread / (B * D));
  at::parallel_for(0, B, grain, [&](int64_t i0, int64_t i1) {
    tile_gemm<T>(i1 - i0, B, D, {Q + i0 * D, D, 1}, Qt.data(), ld, G + i0 * B, B, nullptr, false);
  });
}

// The per-layer pair matrix of the feature pass: the Gram (IP, CS, L2) or the L1 distances.
std::vector<at::Tensor> pair_matrices(Aff aff, const std::vector<at::Tensor>& rows) {
  const int64_t B = rows[0].size(0);
  std::vector<at::Tensor> out;
  for (const auto& r : rows) out.push_back(at::empty({B, B}, r.options()));
  const auto D = widths(rows);
  const bool small = aff != Aff::L1 && *std::max_element(D.begin(), D.end()) < kSmallWidth;
  AT_DISPATCH_FLOATING_TYPES(rows[0].scalar_type(), "affinity_pairs", [&] {
    const auto q = pointers<const scalar_t*>(rows);
    const auto o = pointers<scalar_t*>(out);
    if (small) {
      for (size_t m = 0; m < rows.size(); ++m) gram_by_rows(q[m], B, D[m], o[m]);
      return;
    }
    pairwise_layers(q, D, B, o, aff == Aff::L1 ? l1_upper<scalar_t> : gram_detail::gram_upper<scalar_t>,
                    threads_for(rows));
  });
  return out;
}

template <typename T>
inline T clamp_eps(T x) { return std::max(x, T(kEps)); }

// A = g(z) (Eq. 4–7) from the pair matrix P; the CS norms n_i go to `n`.
template <typename T>
void affinity_from_pairs(Aff aff, const T* P, int64_t B, T* A, T* n) {
  if (aff == Aff::IP || aff == Aff::L1) {
    std::copy_n(P, B * B, A);
    return;
  }
  std::vector<T> diag(B);
  for (int64_t i = 0; i < B; ++i) {
    diag[i] = P[i * B + i];
    n[i] = std::sqrt(std::max(diag[i], T(0)));
  }
  for (int64_t i = 0; i < B; ++i) {
    const T* p = P + i * B;
    T* a = A + i * B;
    if (aff == Aff::CS) {
      const T ni = clamp_eps(n[i]);
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) a[j] = p[j] / (ni * clamp_eps(n[j]));
    } else {  // L2, exactly zero on the diagonal
      const T di = diag[i];
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) {
        const T sq = di + diag[j] - 2 * p[j];
        a[j] = sq <= 0 ? T(0) : std::sqrt(sq);
      }
      a[i] = 0;
    }
  }
}

// dP (the gradient w.r.t. the pair matrix, not yet symmetrised) from dA.
template <typename T>
void affinity_backward(Aff aff, const T* P, const T* A, const T* n, const T* dA, int64_t B, T* dP) {
  if (aff == Aff::IP || aff == Aff::L1) {
    std::copy_n(dA, B * B, dP);
    return;
  }
  if (aff == Aff::CS) {
    // A_ij = P_ij/(n_i n_j), n_i = sqrt(P_ii): dn_i = −Σ_j (dA_ij A_ij + dA_ji A_ji)/n_i, the row
    // and the column sums of dA∘A (both taken walking rows).
    std::vector<T> r(B, T(0));
    for (int64_t i = 0; i < B; ++i) {
      const T *da = dA + i * B, *a = A + i * B;
      T* dp = dP + i * B;
      const T ni = clamp_eps(n[i]);
      T row = 0;
#pragma omp simd reduction(+ : row)
      for (int64_t j = 0; j < B; ++j) {
        dp[j] = da[j] / (ni * clamp_eps(n[j]));
        const T w = da[j] * a[j];
        row += w;
        r[j] += w;
      }
      r[i] += row;
    }
    for (int64_t i = 0; i < B; ++i)
      if (n[i] > T(kEps)) dP[i * B + i] += -r[i] / n[i] / (2 * n[i]);
    return;
  }
  std::fill(dP, dP + B * B, T(0));
  distance_backward(A, dA, B, dP);  // L2: d_ij = sqrt(P_ii + P_jj − 2 P_ij)
}

// Ã = f(A) (Eq. 8–9); `scale` receives the divisor of each row (row norms) or of the matrix.
template <typename T>
void normalise(Norm norm, const T* A, int64_t B, T* out, T* scale) {
  const int64_t BB = B * B;
  if (norm == Norm::L1 || norm == Norm::L2) {
    for (int64_t i = 0; i < B; ++i) {
      const T* a = A + i * B;
      T s = 0;
      if (norm == Norm::L1) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < B; ++j) s += std::abs(a[j]);
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < B; ++j) s += a[j] * a[j];
      }
      scale[i] = norm == Norm::L1 ? s : std::sqrt(s);
      const T d = clamp_eps(scale[i]);
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) out[i * B + j] = a[j] / d;
    }
    return;
  }
  if (norm == Norm::None) {
    std::copy_n(A, BB, out);
    return;
  }
  T s = 0;
  if (norm == Norm::Avg) {
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < BB; ++k) s += A[k];
  } else {
    s = max_of(A, BB);
  }
  scale[0] = s;
  const T c = norm == Norm::Avg ? T(BB) / clamp_eps(s) : T(1) / clamp_eps(s);
#pragma omp simd
  for (int64_t k = 0; k < BB; ++k) out[k] = c * A[k];
}

// dA from dÃ, through f. Row norms: (dÃ − ∂‖A_i‖/∂A_i ⟨dÃ_i, Ã_i⟩)/‖A_i‖; average: c(dÃ − ⟨dÃ, Ã⟩/B²);
// max: dÃ/m, with −⟨dÃ, Ã⟩/m shared evenly by the entries equal to the maximum (torch's rule).
// A clamped divisor is a constant.
template <typename T>
void normalise_backward(Norm norm, const T* A, const T* At, const T* scale, const T* dAt, int64_t B, T* dA) {
  const int64_t BB = B * B;
  if (norm == Norm::None) {
    std::copy_n(dAt, BB, dA);
    return;
  }
  if (norm == Norm::L1 || norm == Norm::L2) {
    for (int64_t i = 0; i < B; ++i) {
      const T s = scale[i];
      if (!(s > T(kEps))) {
        for (int64_t j = 0; j < B; ++j) dA[i * B + j] = dAt[i * B + j] / T(kEps);
        continue;
      }
      const T *a = A + i * B, *at = At + i * B, *dat = dAt + i * B;
      T* da = dA + i * B;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < B; ++j) dot += dat[j] * at[j];
      if (norm == Norm::L2) {
#pragma omp simd
        for (int64_t j = 0; j < B; ++j) da[j] = (dat[j] - at[j] * dot) / s;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < B; ++j) da[j] = (dat[j] - T((a[j] > 0) - (a[j] < 0)) * dot) / s;
      }
    }
    return;
  }
  const T s = scale[0];
  const bool clamped = !(s > T(kEps));
  const T c = norm == Norm::Avg ? T(BB) / clamp_eps(s) : T(1) / clamp_eps(s);
  T dot = 0;
  int64_t ties = 0;
#pragma omp simd reduction(+ : dot, ties)
  for (int64_t k = 0; k < BB; ++k) {
    dot += dAt[k] * At[k];
    ties += A[k] == s;
  }
  // What the divisor's gradient adds: to every entry (average), or to the maxima (max).
  const T shared = clamped ? T(0) : norm == Norm::Avg ? c * dot / T(BB) : c * dot / T(ties);
  const T floor = norm == Norm::Avg ? T(0) : s;  // max: only entries equal to s take `shared`
#pragma omp simd
  for (int64_t k = 0; k < BB; ++k) dA[k] = c * dAt[k] - (norm == Norm::Avg || A[k] == floor ? shared : T(0));
}

// One entry's regression loss (Eq. 10–13) of x = Ãs − Ãt, and its derivative.
template <Loss L, typename T>
inline T entry_loss(T x) {
  if constexpr (L == Loss::L1) return std::abs(x);
  if constexpr (L == Loss::L2) return x * x;
  const T a = std::abs(x);
  return a < 1 ? T(0.5) * x * x : a - T(0.5);
}

template <Loss L, typename T>
inline T entry_grad(T x) {
  if constexpr (L == Loss::L1) return T((x > 0) - (x < 0));
  if constexpr (L == Loss::L2) return 2 * x;
  return std::clamp(x, T(-1), T(1));
}

// Σ_k L(s_k − t_k) over n entries; with dS, also its gradient times `grad`. Each kind is its own
// loop so that it vectorises (a switch inside the loop kept it scalar).
template <Loss L, typename T>
T regression_loss(const T* s, const T* t, int64_t n, T grad, T* dS) {
  T sum = 0;
  if (dS) {
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < n; ++k) {
      const T x = s[k] - t[k];
      sum += entry_loss<L>(x);
      dS[k] = grad * entry_grad<L>(x);
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < n; ++k) sum += entry_loss<L>(s[k] - t[k]);
  }
  return sum;
}

// The softmax of one row: e_j = exp(x_j − max x) into `e`, and Σ_j e_j returned.
template <typename T>
T shifted_exps(const T* x, int64_t n, T* e) {
  const T m = max_of(x, n);
  T z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t j = 0; j < n; ++j) {
    e[j] = std::exp(x[j] - m);
    z += e[j];
  }
  e[n] = m;  // the shift, for the log-softmax
  return z;
}

// L(Ãs, Ãt) (Eq. 10–14); with dS, also dL/dÃs times `grad`.
template <typename T>
T loss_and_grad(Loss loss, const T* s, const T* t, int64_t B, T grad, T* dS) {
  switch (loss) {
    case Loss::L1: return regression_loss<Loss::L1>(s, t, B * B, grad, dS);
    case Loss::L2: return regression_loss<Loss::L2>(s, t, B * B, grad, dS);
    case Loss::SL1: return regression_loss<Loss::SL1>(s, t, B * B, grad, dS);
    case Loss::KL: break;
  }
  // KL of row-softmaxes, 1/b Σ_ij p_t (log p_t − log p_s); d/dÃs = (p_s − p_t)/b. Each row's
  // exps are taken once, for its log-sum-exp, and kept for p = e/z (two per entry, not four).
  T sum = 0;
  const T g = grad / T(B);
  std::vector<T> es(B + 1), et(B + 1);
  for (int64_t i = 0; i < B; ++i) {
    const T* si = s + i * B;
    const T* ti = t + i * B;
    const T zs = shifted_exps(si, B, es.data()), zt = shifted_exps(ti, B, et.data());
    const T lzs = es[B] + std::log(zs), lzt = et[B] + std::log(zt), inv_zs = 1 / zs, inv_zt = 1 / zt;
    const T* e_s = es.data();
    const T* e_t = et.data();
    T row = 0;
    if (dS) {
      T* d = dS + i * B;
#pragma omp simd reduction(+ : row)
      for (int64_t j = 0; j < B; ++j) {
        const T pt = e_t[j] * inv_zt;
        row += pt * ((ti[j] - lzt) - (si[j] - lzs));
        d[j] = g * (e_s[j] * inv_zs - pt);
      }
    } else {
#pragma omp simd reduction(+ : row)
      for (int64_t j = 0; j < B; ++j) row += e_t[j] * inv_zt * ((ti[j] - lzt) - (si[j] - lzs));
    }
    sum += row;
  }
  return sum / T(B);
}

// The B×B working set of one layer: A = g(z), Ã = f(A) and the divisors.
template <typename T>
struct Normalised {
  std::vector<T> A, At, n, scale;
  Normalised(const Variant& v, const T* pairs, int64_t B) : A(B * B), At(B * B), n(B), scale(B) {
    affinity_from_pairs(v.aff, pairs, B, A.data(), n.data());
    normalise(v.norm, A.data(), B, At.data(), scale.data());
  }
};

// S = dP + dPᵀ, in 16×16 blocks whose transposed reads stay in L1.
template <typename T>
void symmetrise(const T* dP, int64_t B, T* S) {
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < B; i0 += kBlock)
    for (int64_t j0 = 0; j0 < B; j0 += kBlock) {
      const int64_t i1 = std::min(B, i0 + kBlock), j1 = std::min(B, j0 + kBlock);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) S[i * B + j] = dP[i * B + j] + dP[j * B + i];
    }
}

// ---------------------------------------------------------------- ops

// The teacher summary: Ã_m = f(g(z_m)) per layer.
std::vector<at::Tensor> affinity_cpu(at::TensorList feats, c10::string_view aff, c10::string_view norm) {
  check_rows(feats, "feats");
  const Variant v = variant(aff, norm);
  const auto rows = rows_in_acc(feats);
  std::vector<at::Tensor> pairs = pair_matrices(v.aff, rows), out;
  const int64_t B = rows[0].size(0);
  AT_DISPATCH_FLOATING_TYPES(rows[0].scalar_type(), "affinity", [&] {
    for (const auto& p : pairs) {
      const Normalised<scalar_t> g(v, p.data_ptr<scalar_t>(), B);
      out.push_back(at::empty({B, B}, p.options()));
      std::copy_n(g.At.data(), B * B, out.back().data_ptr<scalar_t>());
    }
  });
  return out;
}

// The checked inputs of a loss call: its variant, batch, layer count and accumulation type.
struct LossInputs {
  Variant v;
  int64_t B, M;
  at::ScalarType acc;
};

LossInputs loss_inputs(at::TensorList student, at::TensorList teacher, c10::string_view aff,
                       c10::string_view norm, c10::string_view loss) {
  check_rows(student, "student");
  const Variant v = variant(aff, norm, loss);
  const int64_t B = student[0].size(0), M = student.size();
  const auto acc = acc_type_of(student[0].scalar_type());
  check_matrices(teacher, M, B, acc, "teacher");
  return {v, B, M, acc};
}

// L_m = L(f(g(z_S,m)), Ã_T,m) per layer; returns (losses, the student's pair matrices).
std::tuple<at::Tensor, std::vector<at::Tensor>> affinity_loss_cpu(
    at::TensorList student, at::TensorList teacher, c10::string_view aff, c10::string_view norm,
    c10::string_view loss) {
  const auto [v, B, M, acc] = loss_inputs(student, teacher, aff, norm, loss);
  std::vector<at::Tensor> pairs = pair_matrices(v.aff, rows_in_acc(student));
  at::Tensor losses = at::empty({M}, student[0].options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "affinity_loss", [&] {
    for (int64_t m = 0; m < M; ++m) {
      const Normalised<scalar_t> g(v, pairs[m].data_ptr<scalar_t>(), B);
      losses.data_ptr<scalar_t>()[m] =
          loss_and_grad(v.loss, g.At.data(), teacher[m].data_ptr<scalar_t>(), B, scalar_t(0), (scalar_t*)nullptr);
    }
  });
  return {losses, pairs};
}

// dL/dz_m of Σ_m g_m L_m for every layer from its pair matrix (the B×B epilogue's backward, then
// dQ = S·Q or the L1 sign sums), in the students' dtypes; L_m goes to `losses`.
std::vector<at::Tensor> feature_grads(const Variant& v, at::TensorList student, const std::vector<at::Tensor>& rows,
                                      at::TensorList teacher, const std::vector<at::Tensor>& pairs,
                                      const at::Tensor& g_layers, const at::Tensor& losses) {
  const int64_t B = rows[0].size(0), M = rows.size();
  std::vector<at::Tensor> sym, dq, grads;
  AT_DISPATCH_FLOATING_TYPES(rows[0].scalar_type(), "affinity_feature_grads", [&] {
    std::vector<scalar_t> dAt(B * B), dA(B * B), dP(B * B);
    for (int64_t m = 0; m < M; ++m) {
      const Normalised<scalar_t> g(v, pairs[m].data_ptr<scalar_t>(), B);
      losses.data_ptr<scalar_t>()[m] = loss_and_grad(v.loss, g.At.data(), teacher[m].data_ptr<scalar_t>(), B,
                                                     g_layers.data_ptr<scalar_t>()[m], dAt.data());
      normalise_backward(v.norm, g.A.data(), g.At.data(), g.scale.data(), dAt.data(), B, dA.data());
      affinity_backward(v.aff, pairs[m].data_ptr<scalar_t>(), g.A.data(), g.n.data(), dA.data(), B, dP.data());
      at::Tensor S = at::empty({B, B}, pairs[m].options());
      scalar_t* s = S.data_ptr<scalar_t>();
      symmetrise(dP.data(), B, s);
      if (v.aff == Aff::L1)
        for (int64_t i = 0; i < B; ++i) s[i * B + i] = 0;  // sign(z_i − z_i) = 0
      sym.push_back(S);
      dq.push_back(at::empty_like(rows[m]));
    }
    const auto q = pointers<const scalar_t*>(rows);
    const auto backward = v.aff == Aff::L1 ? l1_backward_layers<scalar_t> : gram_backward_layers<scalar_t>;
    backward(pointers<const scalar_t*>(sym), q, widths(rows), B, pointers<scalar_t*>(dq), threads_for(rows));
  });
  for (int64_t m = 0; m < M; ++m) grads.push_back(dq[m].to(student[m].scalar_type()));
  return grads;
}

// affinity_loss together with the gradient of Σ_m L_m w.r.t. each student feature: the training
// path, whose backward is then a scaling of these (the B×B epilogue and the call are not repeated).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> affinity_loss_with_grad_cpu(
    at::TensorList student, at::TensorList teacher, c10::string_view aff, c10::string_view norm,
    c10::string_view loss) {
  const auto [v, B, M, acc] = loss_inputs(student, teacher, aff, norm, loss);
  const auto rows = rows_in_acc(student);
  std::vector<at::Tensor> pairs = pair_matrices(v.aff, rows);
  at::Tensor losses = at::empty({M}, student[0].options().dtype(acc));
  auto grads = feature_grads(v, student, rows, teacher, pairs, at::ones({M}, losses.options()), losses);
  return {losses, pairs, grads};
}

// ---------------------------------------------------------------- autograd

const auto& loss_op() {
  static const auto op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("hyperkd::affinity_loss", "")
                              .typed<decltype(affinity_loss_cpu)>();
  return op;
}

const auto& loss_with_grad_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("hyperkd::affinity_loss_with_grad", "")
                             .typed<decltype(affinity_loss_with_grad_cpu)>();
  return op;
}

// Whether g holds only ones, for a concrete CPU tensor (read without a device sync, and never while
// it is traced: fake and functional tensors answer false).
bool all_ones(const at::Tensor& g) {
  constexpr auto traced = c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  if (!g.device().is_cpu() || g.dim() != 1 || g.key_set().has_any(traced) || !g.has_storage() ||
      !at::isFloatingType(g.scalar_type()) || g.scalar_type() == at::kHalf || g.scalar_type() == at::kBFloat16)
    return false;
  bool ones = true;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "all_ones", [&] {
    const auto a = g.accessor<scalar_t, 1>();
    for (int64_t m = 0; m < a.size(0); ++m) ones = ones && a[m] == scalar_t(1);
  });
  return ones;
}

// Differentiable w.r.t. the student features only. The forward computes the gradients for an
// incoming gradient of ones (affinity_loss_with_grad) and keeps only them; the backward scales
// layer m's by the incoming gradient's m-th entry (each loss depends on its own layer alone), or
// returns them as they are when that gradient is all ones (a loss summed into the total).
struct AffinityLossFunction : public torch::autograd::Function<AffinityLossFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList student,
                                                at::TensorList teacher, c10::string_view aff,
                                                c10::string_view norm, c10::string_view loss) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [losses, pairs, grads] = loss_with_grad_op().call(student, teacher, aff, norm, loss);
    ctx->mark_non_differentiable(pairs);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward(grads);
    torch::autograd::variable_list out{losses};
    out.insert(out.end(), pairs.begin(), pairs.end());
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto feature_grads = ctx->get_saved_variables();
    const int64_t M = feature_grads.size();
    torch::autograd::variable_list out(2 * M + 3);  // student, teacher, then the three options
    const at::Tensor& g = grads[0];
    if (!g.defined()) return out;  // the losses were not used
    const bool ones = all_ones(g);
    for (int64_t m = 0; m < M; ++m)
      out[m] = ones ? feature_grads[m] : feature_grads[m] * g.select(0, m).to(feature_grads[m].scalar_type());
    return out;
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>> affinity_loss_autograd(
    at::TensorList student, at::TensorList teacher, c10::string_view aff, c10::string_view norm,
    c10::string_view loss) {
  const bool needs_grad = at::GradMode::is_enabled() &&
                          std::any_of(student.begin(), student.end(), [](const at::Tensor& f) { return f.requires_grad(); });
  if (!needs_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return loss_op().call(student, teacher, aff, norm, loss);
  }
  auto out = AffinityLossFunction::apply(student, teacher, aff, norm, loss);
  return {out[0], std::vector<at::Tensor>(out.begin() + 1, out.end())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("affinity(Tensor[] feats, str aff, str norm) -> Tensor[]");
  m.def("affinity_loss(Tensor[] student, Tensor[] teacher, str aff, str norm, str loss) "
        "-> (Tensor losses, Tensor[] pairs)");
  m.def("affinity_loss_with_grad(Tensor[] student, Tensor[] teacher, str aff, str norm, str loss) "
        "-> (Tensor losses, Tensor[] pairs, Tensor[] grads)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("affinity", &affinity_cpu);
  m.impl("affinity_loss", &affinity_loss_cpu);
  m.impl("affinity_loss_with_grad", &affinity_loss_with_grad_cpu);
}

TORCH_LIBRARY_IMPL(hyperkd, Autograd, m) {
  m.impl("affinity_loss", &affinity_loss_autograd);
}

}  // namespace hyperkd
