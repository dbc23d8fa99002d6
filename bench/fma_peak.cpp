// The CPU's fp32 FMA peak, the ceiling the GEMM-bound CPU figures in docs/ are compared with: ten
// independent FMA chains per thread (enough to cover FMA latency on two pipes), on one thread and
// then on every hardware thread at once, with the fused kernels' own vectors and FMA
// (hyperkd::Simd, csrc/cpu/tile_gemm.h: AVX-512's 16 lanes where the compiler targets it, else
// AVX2's 8). x86-64 only.
//   g++ -O2 -march=native -pthread bench/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "../csrc/cpu/tile_gemm.h"

using S = hyperkd::Simd<float>;

static S::V splat(float x) { return S::broadcast(&x); }

static double gflops_of_one_thread() {
  constexpr int kChains = 10;
  constexpr long kIterations = 200'000'000;
  S::V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = splat(1.0f + i * 1e-7f);
  const S::V scale = splat(0.999999f), shift = splat(1e-7f);
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < kIterations; ++it) {
#pragma GCC unroll 10
    for (int i = 0; i < kChains; ++i) acc[i] = S::fma(acc[i], scale, shift);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile float sink = 0;  // keeps the chains live
  for (int i = 0; i < kChains; ++i) sink = sink + acc[i][0];
  return kIterations * kChains * 2.0 * S::L / seconds / 1e9;  // lanes × (multiply + add)
}

int main() {
  std::printf("%d-lane FMAs, 1 thread: %.1f GFLOP/s\n", int(S::L), gflops_of_one_thread());
  const unsigned n = std::thread::hardware_concurrency();
  std::vector<double> rates(n);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n; ++t) threads.emplace_back([&rates, t] { rates[t] = gflops_of_one_thread(); });
  double total = 0;
  for (unsigned t = 0; t < n; ++t) {
    threads[t].join();
    total += rates[t];
  }
  std::printf("%u threads: %.1f GFLOP/s\n", n, total);
}
