// Register-tiled products for the fused CPU kernels: the widest vectors the build's target has
// (64 bytes with AVX-512, else 32) with explicit FMAs, and a
// small GEMM whose A operand may be any strided view (a matrix or its transpose) and whose tiles
// start from zero, a bias row or the output itself.
//
// Why not BLAS for the fused MLP (siren_decode): its products are many small ones (a 256-row
// block times a width² weight, per layer, per block), where MKL's sgemm pays its packing of both
// operands and a call's set-up every time (7–10 % of the step on the width-128 SIREN step); here
// the weights are packed once per call and the activations are read in place, from buffers whose
// rows the caller pads off powers of two (`padded_ld`).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace hyperkd {

// The vector width: AVX-512's zmm where the build targets it (-march=native on such a CPU: on a
// 2-core Xeon the 32-byte kernels ran at half of MKL's 353 GFLOP/s), else AVX2's ymm (GCC splits
// them where only SSE exists).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

// kVectorBytes-wide vectors; loads through memcpy are unaligned vmovups.
template <typename T>
struct Simd {
  typedef T V __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t L = kVectorBytes / sizeof(T);
  static V load(const T* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  // The first n (< L) lanes from or to memory, the others zero: a row's last, partial vector.
  static V load_prefix(const T* p, int64_t n) {
    T lanes[L] = {};
    std::copy_n(p, n, lanes);
    return load(lanes);
  }
  static void store_prefix(T* p, V v, int64_t n) {
    T lanes[L];
    store(lanes, v);
    std::copy_n(lanes, n, p);
  }
  // *p in every lane. Spelled as the load-broadcast on AVX: GCC turns V{} + x into an add and a
  // register shuffle, two FP-pipe operations per broadcast where this is a load.
  static V broadcast(const T* p) {
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4)
      return (V)_mm512_set1_ps(*p);
    else
      return (V)_mm512_set1_pd(*p);
#elif defined(__AVX__)
    if constexpr (sizeof(T) == 4)
      return (V)_mm256_broadcast_ss(p);
    else
      return (V)_mm256_broadcast_sd(p);
#else
    return V{} + *p;
#endif
  }
  static T sum(V v) { T s = 0; for (int64_t l = 0; l < L; ++l) s += v[l]; return s; }
  // a·b + c. GCC does not contract vector-extension a * b + c in ISO C++ mode (-std=c++20), so
  // the FMA is spelled out: otherwise a multiply and an add, half the FMA units' throughput.
  static V fma(V a, V b, V c) {
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4)
      return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
    else
      return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(__FMA__)
    if constexpr (sizeof(T) == 4)
      return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
    else
      return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
    return a * b + c;
#endif
  }
  // Keeps v in a register from here on, so the compiler cannot fold its load into each use.
  static void pin(V& v) {
#if defined(__AVX__)
    asm("" : "+v"(v));  // "v": any vector register, the upper 16 of AVX-512's too
#endif
  }
};

// The A operand of tile_gemm: element (i, k) at p[i·row + k·col].
template <typename T>
struct StridedMatrix {
  const T* p;
  int64_t row, col;
};

namespace tile_detail {

// Tiles of 6 rows × 2 vectors: 12 accumulators + 2 B vectors + 1 broadcast fill AVX2's 16
// registers. (AVX-512's 32 would hold 12 rows; on the Xeon that slowed the SP backward by 40 %
// and left the SIREN step as it was.)
constexpr int kRows = 6, kVecs = 2;  // the tile's loop spells out its two vectors
// K is walked in chunks so that one tile's A rows and B panel (6 + 2·L values per k) stay in L1.
constexpr int64_t kDepth = 128;

template <typename T>
constexpr int64_t panel_width() { return kVecs * Simd<T>::L; }

// C[0:R, 0:cols] = init + Σ_k A(i, k)·B[k, 0:cols] over k < K, cols ≤ panel_width (all of it
// when Full); B's rows are read whole (panel_width values), C's only to `cols`. init is C itself
// (accumulate), `bias`, or zero. Full tiles are their own instance: the partial one's lane
// arithmetic around the loads and stores cost ~8 % of a K = 128 tile.
template <typename T, int R, bool Full>
[[gnu::always_inline]] inline void tile(int64_t K, StridedMatrix<T> a, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t cols,
          const T* bias, bool accumulate) {
  using S = Simd<T>;
  constexpr int64_t L = S::L;
  const auto lanes = [&](int v) { return Full ? L : std::clamp<int64_t>(cols - v * L, 0, L); };
  const auto load = [&](const T* p, int v) {
    return Full ? S::load(p + v * L) : S::load_prefix(p + v * L, lanes(v));
  };
  typename S::V acc[R][kVecs];
  #pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
    #pragma GCC unroll 2
    for (int v = 0; v < kVecs; ++v)
      acc[i][v] = accumulate ? load(c + i * ldc, v) : bias ? load(bias, v) : typename S::V{};
  // Locals, not the struct's fields: GCC re-read those from the stack and multiplied by the
  // stride in every step of the loop.
  const T* arow = a.p;
  const int64_t a_row = a.row, a_col = a.col;
  for (int64_t k = 0; k < K; ++k, arow += a_col, b += ldb) {
    const auto b0 = S::load(b), b1 = S::load(b + L);
    #pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const auto ai = S::broadcast(arow + i * a_row);
      acc[i][0] = S::fma(ai, b0, acc[i][0]);
      acc[i][1] = S::fma(ai, b1, acc[i][1]);
    }
  }
  #pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
    #pragma GCC unroll 2
    for (int v = 0; v < kVecs; ++v) {
      T* p = c + i * ldc + v * L;
      if (Full || lanes(v) == L)
        S::store(p, acc[i][v]);
      else if (lanes(v) > 0)
        S::store_prefix(p, acc[i][v], lanes(v));
    }
}

// The last rows of a panel, fewer than kRows. This and the other out-of-line parts take the view
// by reference: passed by value, the caller copied it with a 16-byte load of two 8-byte stores
// it had just made, which the store buffer cannot forward, so every call waited for all earlier
// stores to reach the cache (a quarter of the SP backward's samples).
template <typename T, bool Full, int R = kRows - 1>
[[gnu::noinline]] void tile_rest(int64_t rows, int64_t K, const StridedMatrix<T>& a, const T* b,
                                 int64_t ldb, T* c, int64_t ldc, int64_t cols, const T* bias,
                                 bool accumulate) {
  if constexpr (R > 1)
    if (rows < R)
      return tile_rest<T, Full, R - 1>(rows, K, a, b, ldb, c, ldc, cols, bias, accumulate);
  tile<T, R, Full>(K, a, b, ldb, c, ldc, cols, bias, accumulate);
}

// All M rows of one column panel. Its own function, the full tiles inlined into one loop: inlined
// into a larger function, GCC spilled the accumulators and row offsets to the stack (42 against
// 90 GFLOP/s), and called once per tile, it paid a call's set-up every 6·K FMAs.
template <typename T, bool Full>
[[gnu::noinline]] void panel(int64_t M, int64_t K, const StridedMatrix<T>& a, const T* b, int64_t ldb,
                             T* c, int64_t ldc, int64_t cols, const T* bias, bool accumulate) {
  int64_t i0 = 0;
  for (; i0 + kRows <= M; i0 += kRows)
    tile<T, kRows, Full>(K, {a.p + i0 * a.row, a.row, a.col}, b, ldb, c + i0 * ldc, ldc, cols,
                         bias, accumulate);
  if (i0 < M)
    tile_rest<T, Full>(M - i0, K, {a.p + i0 * a.row, a.row, a.col}, b, ldb, c + i0 * ldc, ldc,
                       cols, bias, accumulate);
}

// C's full row tiles, each across all N columns before the next (the order for outputs whose rows
// lie pages apart, see tile_gemm); returns the rows done, a multiple of kRows. One call for all of
// them, as `panel` is for its column.
template <typename T>
[[gnu::noinline]] int64_t row_tiles(int64_t M, int64_t N, int64_t K, const StridedMatrix<T>& a,
                                    const T* b, int64_t ldb, T* c, int64_t ldc, const T* bias,
                                    bool accumulate) {
  const int64_t w = panel_width<T>();
  int64_t i0 = 0;
  for (; i0 + kRows <= M; i0 += kRows) {
    const StridedMatrix<T> rows{a.p + i0 * a.row, a.row, a.col};
    T* ci = c + i0 * ldc;
    int64_t j0 = 0;
    for (; j0 + w <= N; j0 += w)
      tile<T, kRows, true>(K, rows, b + j0, ldb, ci + j0, ldc, w, bias ? bias + j0 : nullptr,
                           accumulate);
    if (j0 < N)
      tile<T, kRows, false>(K, rows, b + j0, ldb, ci + j0, ldc, N - j0,
                            bias ? bias + j0 : nullptr, accumulate);
  }
  return i0;
}

}  // namespace tile_detail

// Rows of `cols` values padded for tile_gemm's B operand: a multiple of the panel width, plus
// one panel where that would be a multiple of 256 bytes, since the K rows a tile walks would
// then fall into a few cache sets (width 128 unpadded: 62–83 against 92 GFLOP/s on one core).
template <typename T>
int64_t padded_ld(int64_t cols) {
  const int64_t w = tile_detail::panel_width<T>();
  const int64_t ld = (cols + w - 1) / w * w;
  return ld * int64_t(sizeof(T)) % 256 == 0 ? ld + w : ld;
}

// dst (rows of ld, zero padded) = the rows×cols matrix whose element (r, c) is src[r·row + c·col].
template <typename T>
void pack_rows(const T* src, int64_t rows, int64_t cols, int64_t row, int64_t col, T* dst,
               int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[r * ld + c] = src[r * row + c * col];
    std::fill(dst + r * ld + cols, dst + (r + 1) * ld, T(0));
  }
}

// Whether one K chunk of each of tile_gemm's strided operands stays within half the L1 data
// TLB's reach (64 pages of 4 KiB on the development machine's Zen 3; A, B and C share it): B's
// chunk spans kDepth rows ldb apart, and so does A's when A is a transpose (its k steps are
// rows). Beyond that, page walks every few k steps let BLAS, which packs both operands into
// contiguous panels, pull ahead: at width 280 the op ran 2–4 % behind MKL, at width 680 its
// products ran at 62–72 against MKL's 82–86 GFLOP/s on one core.
template <typename T>
bool tile_gemm_fits(StridedMatrix<T> A, int64_t ldb) {
  constexpr int64_t kReach = 64 * 4096;
  const int64_t widest = std::max(ldb, A.col == 1 ? int64_t(0) : A.col);
  return tile_detail::kDepth * int64_t(sizeof(T)) * widest <= kReach / 2;
}

// C (M×N, rows ldc apart) = init + A·B for a strided M×K view A and a row-major K×N B whose rows
// (ldb apart) are readable to N rounded up to the panel width; init is C itself when
// `accumulate`, else the N-vector `bias`, or zero when that is null. Single-threaded: the callers
// run one block per thread.
//
// Column panels are walked outermost, so that a panel of B stays in L1 while every row tile reads
// it, unless C's rows lie a page or more apart (the Gram backward's outputs, rows D apart): a
// panel would then write 64 bytes to each of M pages, which the store prefetchers do not follow,
// and the store buffer filled (the SP backward on VGG-19-bn, B = 64: 25–28 ms in that order,
// 20–21 in this one), so there the row tiles are outermost and each writes its rows front to back.
template <typename T>
void tile_gemm(int64_t M, int64_t N, int64_t K, StridedMatrix<T> A, const T* B, int64_t ldb, T* C,
               int64_t ldc, const T* bias, bool accumulate) {
  using namespace tile_detail;
  const int64_t w = panel_width<T>();
  const bool rows_outer = ldc * int64_t(sizeof(T)) >= 4096;
  for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kDepth) {
    const int64_t kc = std::min(kDepth, K - k0);
    const bool onto_c = accumulate || k0 > 0;
    const StridedMatrix<T> a{A.p + k0 * A.col, A.row, A.col};
    const T* b = B + k0 * ldb;
    const int64_t i0 =
        rows_outer ? row_tiles<T>(M, N, kc, a, b, ldb, C, ldc, onto_c ? nullptr : bias, onto_c) : 0;
    if (i0 == M) continue;
    const StridedMatrix<T> rest{a.p + i0 * a.row, a.row, a.col};
    for (int64_t j0 = 0; j0 < N; j0 += w) {
      const int64_t cols = std::min(w, N - j0);
      const T* init = onto_c || !bias ? nullptr : bias + j0;
      if (cols == w)
        panel<T, true>(M - i0, kc, rest, b + j0, ldb, C + i0 * ldc + j0, ldc, cols, init, onto_c);
      else
        panel<T, false>(M - i0, kc, rest, b + j0, ldb, C + i0 * ldc + j0, ldc, cols, init, onto_c);
    }
  }
}

}  // namespace hyperkd
