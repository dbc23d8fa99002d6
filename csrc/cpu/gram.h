// Register-tiled kernels for the two products of the relational KD ops, over a list of layers at
// once: the Gram G = Q·Qᵀ (B×B) of a flattened feature Q (B×D) and its backward dQ = S·Q.
//
// Why not BLAS: the Gram of a batch is a product with a tiny output (B = 16…128) and a long inner
// dimension (D = C·H·W, up to 65536 on CIFAR nets), the shape MKL's sgemm is worst at — 33 GFLOP/s
// per core at B = 16, against 79 for square products — and it computes both triangles. Here a
// 3×4 tile of G is accumulated in registers across a cache-sized slice of D, only tiles on or
// above the diagonal are computed, and the threads split D rather than the output, so every
// thread has work however small B is and however unequal the layers are. From B = 256 (gram_upper)
// the blocks off the diagonal are BLAS products after all: there the output is large enough for
// MKL's rate, and the tiles' chunks of columns get short. The backward is tile_gemm (tile_gemm.h)
// over column panels of Q.
#pragma once
#include <ATen/Parallel.h>

#include "blas_gemm.h"
#include "tile_gemm.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace hyperkd {
namespace gram_detail {

// 3×4 tiles of G (pair_upper's tiles are 4 columns wide): 12 accumulators + 3 + 1 operands fill
// AVX2's 16 registers.
constexpr int kTileRows = 3;

// The column sums the pairwise kernels share, Σ_k p(Q[i, k], Q[j, k]): Pair::step folds one vector
// of columns into an accumulator, Pair::scalar gives one column of the tail. The Gram's p:
struct Product {
  template <typename S>
  static typename S::V step(typename S::V acc, typename S::V a, typename S::V b) { return S::fma(a, b, acc); }
  template <typename T>
  static T scalar(T a, T b) { return a * b; }
};

// out[i0.., j0..] (rows ldo apart) += Σ_{k0 ≤ k < k1} p(Q[i, k], Q[j, k]) for a TI×TJ tile.
// The tile loops carry `GCC unroll` so that they are unrolled before the accumulator arrays are
// split into registers; otherwise GCC kept the arrays on the stack and stored them every step.
template <typename T, typename Pair, int TI, int TJ>
void pair_tile(const T* Q, int64_t ld, int64_t i0, int64_t j0, int64_t k0, int64_t k1, T* out, int64_t ldo) {
  using S = Simd<T>;
  typename S::V acc[TI][TJ] = {};
  const T* a[TI];
  const T* b[TJ];
  #pragma GCC unroll 8
  for (int i = 0; i < TI; ++i) a[i] = Q + (i0 + i) * ld;
  #pragma GCC unroll 8
  for (int j = 0; j < TJ; ++j) b[j] = Q + (j0 + j) * ld;
  int64_t k = k0;
  for (; k + S::L <= k1; k += S::L) {
    typename S::V va[TI];
    #pragma GCC unroll 8
    for (int i = 0; i < TI; ++i) {
      va[i] = S::load(a[i] + k);
      // Pins the vectors to registers (here and below): left alone, GCC folded the loads into
      // the FMAs and re-read each vector for every use, 15–16 loads per 12 FMAs, not 7.
      S::pin(va[i]);
    }
    #pragma GCC unroll 8
    for (int j = 0; j < TJ; ++j) {
      typename S::V vb = S::load(b[j] + k);
      S::pin(vb);
      #pragma GCC unroll 8
      for (int i = 0; i < TI; ++i) acc[i][j] = Pair::template step<S>(acc[i][j], va[i], vb);
    }
  }
  #pragma GCC unroll 8
  for (int i = 0; i < TI; ++i)
    #pragma GCC unroll 8
    for (int j = 0; j < TJ; ++j) {
      T s = S::sum(acc[i][j]);
      for (int64_t r = k; r < k1; ++r) s += Pair::scalar(a[i][r], b[j][r]);
      out[(i0 + i) * ldo + j0 + j] += s;
    }
}

// pair_tile for a tile of ti ≤ TI rows and tj ≤ 4 columns (the partial tiles at B's edges).
template <typename T, typename Pair, int TI>
void pair_tile_any(const T* Q, int64_t ld, int64_t i0, int64_t j0, int64_t ti, int64_t tj, int64_t k0,
                   int64_t k1, T* out, int64_t ldo) {
  if constexpr (TI > 1)
    if (ti < TI) return pair_tile_any<T, Pair, TI - 1>(Q, ld, i0, j0, ti, tj, k0, k1, out, ldo);
  switch (tj) {
    case 4: return pair_tile<T, Pair, TI, 4>(Q, ld, i0, j0, k0, k1, out, ldo);
    case 3: return pair_tile<T, Pair, TI, 3>(Q, ld, i0, j0, k0, k1, out, ldo);
    case 2: return pair_tile<T, Pair, TI, 2>(Q, ld, i0, j0, k0, k1, out, ldo);
    default: return pair_tile<T, Pair, TI, 1>(Q, ld, i0, j0, k0, k1, out, ldo);
  }
}

// The tiles on and above the diagonal of out += Σ_{k0 ≤ k < k1} p(Q[i, k], Q[j, k]) for B rows of
// TI×4 tiles, the columns walked in chunks of chunk_bytes over the B rows, which stay in L2 while
// every tile pair reads them. (Copying each chunk to a padded buffer first, as the backward does
// with its panels, made the Gram slower: a tile reads its rows once, front to back.)
template <typename T, typename Pair, int TI>
void pair_upper(const T* Q, int64_t B, int64_t ld, int64_t k0, int64_t k1, T* out, int64_t ldo,
                int64_t chunk_bytes) {
  constexpr int64_t TJ = 4;
  const int64_t chunk = std::max<int64_t>(256, (chunk_bytes / (B * int64_t(sizeof(T)))) & ~int64_t(31));
  for (int64_t c0 = k0; c0 < k1; c0 += chunk) {
    const int64_t c1 = std::min(k1, c0 + chunk);
    for (int64_t i0 = 0; i0 < B; i0 += TI)
      for (int64_t j0 = i0 / TJ * TJ; j0 < B; j0 += TJ)
        pair_tile_any<T, Pair, TI>(Q, ld, i0, j0, std::min<int64_t>(TI, B - i0), std::min(TJ, B - j0), c0, c1,
                                   out, ldo);
  }
}

// The Gram's upper tiles (G's rows ldg apart: a diagonal block of a larger Gram is the Gram of its
// rows). The chunk is 256 KiB per 32 bytes of vector, so a tile takes as many vector steps between
// its horizontal sums with AVX-512 as with AVX2: at 256 KiB, the 64-byte tiles' sums cost the
// Xeon's forward 15 % (ResNet-20 B = 128: 24–26 against 22 ms at 512 KiB or 1 MiB).
template <typename T>
void gram_upper_tiles(const T* Q, int64_t B, int64_t ld, int64_t k0, int64_t k1, T* G, int64_t ldg) {
  pair_upper<T, Product, kTileRows>(Q, B, ld, k0, k1, G, ldg, (256 << 10) * kVectorBytes / 32);
}

// From this batch up, the Gram is cut into blocks of kBlasRows rows: the blocks on the diagonal
// are Grams of their rows (the tiles above), those above it products by BLAS. The tiles end every
// chunk of columns in horizontal sums, and the chunk (the B rows kept in L2) shrinks as B grows: at
// B = 256 they ran at 57 % of MKL's product rate, at B = 64 at 86 % (one thread, D = 16,384).
constexpr int64_t kBlasBatch = 256, kBlasRows = 64;

// The upper tiles of G += Q[:, k0:k1]·Q[:, k0:k1]ᵀ (see gram_upper_tiles), G's rows B apart.
template <typename T>
void gram_upper(const T* Q, int64_t B, int64_t ld, int64_t k0, int64_t k1, T* G) {
  if (B < kBlasBatch) return gram_upper_tiles(Q, B, ld, k0, k1, G, B);
  if (k1 <= k0) return;
  for (int64_t i0 = 0; i0 < B; i0 += kBlasRows) {
    const int64_t rows = std::min(kBlasRows, B - i0);
    const T* block = Q + i0 * ld;
    gram_upper_tiles(block, rows, ld, k0, k1, G + i0 * B + i0, B);
    if (i0 + rows < B)
      blas_rows_dot(block + k0, rows, block + rows * ld + k0, B - i0 - rows, k1 - k0, ld,
                    G + i0 * B + i0 + rows, B);
  }
}

// Thread t's share [begin, end) of n columns, cut at multiples of the vector width.
template <typename T>
std::pair<int64_t, int64_t> column_share(int64_t n, int64_t t, int64_t threads) {
  const int64_t L = Simd<T>::L, vecs = (n + L - 1) / L;
  return {std::min(n, vecs * t / threads * L), std::min(n, vecs * (t + 1) / threads * L)};
}

// The threads a pass uses: all of at::get_num_threads(), or at most max_threads when it is > 0.
inline int64_t thread_count(int64_t max_threads) {
  const int64_t all = std::max<int64_t>(1, at::get_num_threads());
  return max_threads > 0 ? std::min(max_threads, all) : all;
}

}  // namespace gram_detail

// out[m] = the symmetric B×B matrix of a pairwise sum over columns, Σ_k p(Q_m[i, k], Q_m[j, k]),
// for M row-major B×D_m matrices (rows D_m apart), both triangles written. upper(Q, B, ld, k0, k1,
// G) adds the tiles on and above the diagonal of columns k0..k1 into G (gram_detail::gram_upper
// for the Gram; the L1 distances of csrc/cpu/affinity.cpp). The threads split every layer's D;
// their partial matrices are summed at the end. At most max_threads threads work (all when 0).
template <typename T, typename Upper>
void pairwise_layers(const std::vector<const T*>& Q, const std::vector<int64_t>& D, int64_t B,
                     const std::vector<T*>& grams, Upper&& upper, int64_t max_threads = 0) {
  const int64_t M = Q.size(), BB = B * B;
  const int64_t threads = gram_detail::thread_count(max_threads);
  std::vector<T> partial((threads - 1) * M * BB, T(0));
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t m = 0; m < M; ++m) {
        T* G = t == 0 ? grams[m] : partial.data() + ((t - 1) * M + m) * BB;
        if (t == 0) std::fill(G, G + BB, T(0));
        const auto [k0, k1] = gram_detail::column_share<T>(D[m], t, threads);
        upper(Q[m], B, D[m], k0, k1, G);
      }
  });
  for (int64_t m = 0; m < M; ++m) {
    T* G = grams[m];
    for (int64_t t = 1; t < threads; ++t) {
      const T* p = partial.data() + ((t - 1) * M + m) * BB;
      for (int64_t k = 0; k < BB; ++k) G[k] += p[k];
    }
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < i; ++j) G[i * B + j] = G[j * B + i];
  }
}

// grams[m] = Q_m·Q_mᵀ for M row-major B×D_m matrices (rows D_m apart), both triangles written.
template <typename T>
void gram_layers(const std::vector<const T*>& Q, const std::vector<int64_t>& D, int64_t B,
                 const std::vector<T*>& grams) {
  pairwise_layers(Q, D, B, grams, gram_detail::gram_upper<T>);
}

// out_m = S_m·Q_m (B×D_m) for M row-major layers and symmetric S_m; the threads (at most
// max_threads, all when 0) split every layer's columns.
template <typename T>
void gram_backward_layers(const std::vector<const T*>& Sm, const std::vector<const T*>& Q,
                          const std::vector<int64_t>& D, int64_t B, const std::vector<T*>& out,
                          int64_t max_threads = 0) {
  const int64_t M = Q.size();
  const int64_t threads = gram_detail::thread_count(max_threads);
  constexpr int64_t block = tile_detail::panel_width<T>();
  const int64_t panel = std::max<int64_t>(1, (32 << 10) / (B * int64_t(sizeof(T)) * block)) * block;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    // Column panels of Q are copied to a B×panel block whose rows are padded (padded_ld) first:
    // Q's rows lie D apart, a power of two on CIFAR nets, so read in place they fall into the
    // same cache sets.
    const int64_t ld = padded_ld<T>(panel);
    std::vector<T> packed(B * ld);
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t m = 0; m < M; ++m) {
        const auto [k0, k1] = gram_detail::column_share<T>(D[m], t, threads);
        for (int64_t c0 = k0; c0 < k1; c0 += panel) {
          const int64_t n = std::min(k1, c0 + panel) - c0;
          for (int64_t j = 0; j < B; ++j) std::copy_n(Q[m] + j * D[m] + c0, n, packed.data() + j * ld);
          // out[i, :] = Σ_j S[j, i]·P[j, :]: A(i, j) = S[j·B + i].
          tile_gemm<T>(B, n, B, {Sm[m], 1, B}, packed.data(), ld, out[m] + c0, D[m], nullptr, false);
        }
      }
  });
}

// Adds dL/dd (B×B, per ordered pair) into dG through the distances d_ij = sqrt(G_ii + G_jj − 2 G_ij)
// of Gram G (RKD-D and the L2 affinity share it).
template <typename T>
void distance_backward(const T* d, const T* dd, int64_t B, T* dG) {
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < B; ++j) {
      const T n = d[i * B + j];
      if (n == 0) continue;
      const T a = dd[i * B + j] / n;
      dG[i * B + i] += a / 2;
      dG[j * B + j] += a / 2;
      dG[i * B + j] -= a;
    }
}

}  // namespace hyperkd
