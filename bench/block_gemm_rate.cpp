// One core's GFLOP/s on the products of one siren_decode block (docs/siren.md), the figures behind
// `tile_gemm_fits`, which sends a product to the register tiles or to MKL: a block of 256 rows
// times a hidden weight (the forward's and dh's products, C = A·B, B = the packed weight) and the
// weight gradient (G += Aᵀ·B, both operands the block's rows), each through
//   tiles     tile_gemm as the op calls it (B row-major, rows padded_ld apart);
//   panels    tile_gemm over B packed panel by panel (each panel's K rows contiguous), the layout
//             BLAS libraries pack into, which keeps a K chunk within a few pages;
//   mkl       blas_gemm, the op's BLAS route (the sgemm_ that libtorch_cpu links), on the same
//             buffers.
// The TLB bound is not applied here, so every width runs on the tiles. Single-threaded, x86-64.
// Exits non-zero when the three routes' products differ by more than fp32 rounding allows.
//   TL=.venv/lib/python3.11/site-packages/torch/lib
//   g++ -O3 -std=c++20 -march=native bench/block_gemm_rate.cpp -o /tmp/block_gemm_rate
//       -L$TL -ltorch_cpu -lc10 -Wl,-rpath,$TL       (one line)
//   OMP_NUM_THREADS=1 /tmp/block_gemm_rate 64 128 224 280 680
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../csrc/cpu/blas_gemm.h"
#include "../csrc/cpu/tile_gemm.h"

namespace {

constexpr int64_t kBlock = 256;

template <typename Fn>
double gflops(int64_t flops, Fn&& fn) {
  for (int i = 0; i < 20; ++i) fn();
  const int rounds = 300;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < rounds; ++i) fn();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return double(flops) * rounds / s / 1e9;
}

// The largest |x − y| over the first `rows` rows (`cols` of each, rows ld apart), relative to
// the largest |y|.
double relative_difference(const std::vector<float>& x, const std::vector<float>& y, int64_t rows,
                           int64_t cols, int64_t ld) {
  double diff = 0, scale = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      diff = std::max(diff, double(std::abs(x[r * ld + c] - y[r * ld + c])));
      scale = std::max(scale, double(std::abs(y[r * ld + c])));
    }
  return diff / scale;
}

// Prints the width's row of the table; returns whether the routes agree.
bool measure(int64_t H) {
  using hyperkd::tile_gemm;
  const int64_t ld = hyperkd::padded_ld<float>(H), w = hyperkd::tile_detail::panel_width<float>();
  const int64_t panels = (H + w - 1) / w;
  std::vector<float> act(kBlock * ld), weight(H * ld), out(kBlock * ld), grad(H * ld);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-1, 1);
  for (auto* v : {&act, &weight})
    for (auto& x : *v) x = uniform(rng);
  std::vector<float> packed(panels * H * w);
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < H; ++k)
      for (int64_t l = 0; l < w; ++l) packed[(p * H + k) * w + l] = weight[k * ld + p * w + l];
  const int64_t flops = 2 * kBlock * H * H;
  const auto by_tiles = [&](std::vector<float>& c) {
    tile_gemm<float>(kBlock, H, H, {act.data(), ld, 1}, weight.data(), ld, c.data(), ld, nullptr, false);
  };
  const auto by_panels = [&](std::vector<float>& c) {
    for (int64_t p = 0; p < panels; ++p)
      tile_gemm<float>(kBlock, std::min(w, H - p * w), H, {act.data(), ld, 1},
                       packed.data() + p * H * w, w, c.data() + p * w, ld, nullptr, false);
  };
  const auto by_mkl = [&](std::vector<float>& c) {
    hyperkd::blas_gemm<float>(kBlock, H, H, {act.data(), ld, 1}, weight.data(), ld, c.data(), ld, nullptr, false);
  };
  const double tiles = gflops(flops, [&] { by_tiles(out); });
  const double panel = gflops(flops, [&] { by_panels(out); });
  const double blas = gflops(flops, [&] { by_mkl(out); });
  const double grad_tiles = gflops(flops, [&] {
    tile_gemm<float>(H, H, kBlock, {act.data(), 1, ld}, act.data(), ld, grad.data(), ld, nullptr, true);
  });
  const double grad_blas = gflops(flops, [&] {
    hyperkd::blas_gemm<float>(H, H, kBlock, {act.data(), 1, ld}, act.data(), ld, grad.data(), ld, nullptr, true);
  });
  std::printf("| %ld | %.0f | %.0f | %.0f | %.0f | %.0f |\n", long(H), tiles, panel, blas, grad_tiles,
              grad_blas);
  // Sums of H products of unit-range values: fp32 rounding grows with √H (the 8 covers the two
  // summation orders).
  std::vector<float> tiled(out.size()), paneled(out.size()), blas_out(out.size());
  by_tiles(tiled);
  by_panels(paneled);
  by_mkl(blas_out);
  const double tolerance = 8 * std::sqrt(double(H)) * 6e-8;
  const double worst = std::max(relative_difference(tiled, blas_out, kBlock, H, ld),
                                relative_difference(paneled, blas_out, kBlock, H, ld));
  if (worst > tolerance)
    std::fprintf(stderr, "width %ld: tile and MKL products differ by %.3g (relative), over %.3g\n",
                 long(H), worst, tolerance);
  return worst <= tolerance;
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("| width | block·W tiles | block·W panels | block·W mkl | W grad tiles | W grad mkl |\n"
              "|---|---|---|---|---|---|\n");
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s WIDTH...\n", argv[0]);
    return 2;
  }
  bool agree = true;
  for (int i = 1; i < argc; ++i) agree = measure(std::atoll(argv[i])) && agree;
  return agree ? 0 : 1;
}
