// glibc's libmvec has SIMD expf/sinf/cosf (and the double versions); <math.h> declares them only
// under -ffast-math, which would also relax every other float operation of a kernel, so they are
// declared here for the kernels' `omp simd` loops directly (setup.py links -lmvec).
#pragma once
#include <cmath>

#if defined(__x86_64__) && defined(__GLIBC__)
extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
float sinf(float);
#pragma omp declare simd notinbranch
double sin(double);
#pragma omp declare simd notinbranch
float cosf(float);
#pragma omp declare simd notinbranch
double cos(double);
}
#endif

#include <bit>
#include <cstdint>

namespace hyperkd {

template <typename T>
struct SinCos {
  T sin, cos;
};

// Both sin x and cos x from one range reduction, for `omp simd` loops that need both (the SIREN
// backward: sin z for the next weight gradient, cos z for the activation's derivative). libmvec's
// vector sincosf takes vectors of pointers, which `omp simd` cannot feed without a scatter, and
// its sinf + cosf pay the reduction twice: 0.95 ns per element against 0.53 for this on the
// development machine's AVX2 core.
// Cody–Waite reduction x = k·π/2 + r, |r| ≤ π/4, with π/2 split into three floats whose products
// with k are exact for |x| ≤ kFastTrigBound, then Cephes' single-precision minimax polynomials on
// that range (absolute error ≤ 1e-7 over the whole range, below an ulp of 1). Outside the bound
// (and for inf), `fast_trig_valid` is false and the caller takes std::sin / std::cos instead.
constexpr float kFastTrigBound = 8192.f;

[[gnu::always_inline]] inline bool fast_trig_valid(float x) { return std::fabs(x) <= kFastTrigBound; }
inline bool fast_trig_valid(double) { return true; }

[[gnu::always_inline]] inline SinCos<float> sincos_fast(float x) {
  // Adding 1.5·2²³ rounds x·2/π to the integer k and leaves k mod 4 in the low mantissa bits.
  constexpr float kRound = 12582912.f;
  const float shifted = x * 0.636619772367581343f + kRound;
  const float k = shifted - kRound;
  const uint32_t quadrant = std::bit_cast<uint32_t>(shifted);
  float r = std::fma(k, -1.5703125f, x);
  r = std::fma(k, -4.837512969970703125e-4f, r);
  r = std::fma(k, -7.54978995489188216e-8f, r);
  const float r2 = r * r;
  const float s = std::fma(
      r * r2, std::fma(r2, std::fma(r2, -1.9515295891e-4f, 8.3321608736e-3f), -1.6666654611e-1f), r);
  const float c = std::fma(
      r2 * r2,
      std::fma(r2, std::fma(r2, 2.443315711809948e-5f, -1.388731625493765e-3f), 4.166664568298827e-2f),
      std::fma(r2, -0.5f, 1.f));
  // Quadrant q: sin x = (s, c, −s, −c)[q], cos x = (c, −s, −c, s)[q].
  const bool odd = quadrant & 1u;
  const uint32_t sin_sign = (quadrant & 2u) << 30, cos_sign = ((quadrant + 1u) & 2u) << 30;
  return {std::bit_cast<float>(std::bit_cast<uint32_t>(odd ? c : s) ^ sin_sign),
          std::bit_cast<float>(std::bit_cast<uint32_t>(odd ? s : c) ^ cos_sign)};
}

// sin x alone (the SIREN forward), by the same reduction to a half period instead, x = kπ + r with
// |r| ≤ π/2 and sin x = (−1)^k sin r, so one polynomial serves where sincos_fast needs two and a
// select: 0.34 ns per element against libmvec sinf's 0.52. The odd degree-11 polynomial is a
// least-squares minimax fit of sin on [0, π/2]; absolute error ≤ 1.2e-7 (two ulps of values near
// 1) for |x| ≤ kFastTrigBound, against libmvec's 3e-8.
[[gnu::always_inline]] inline float sin_fast(float x) {
  constexpr float kRound = 12582912.f;
  const float shifted = x * 0.318309886183790672f + kRound;
  const float k = shifted - kRound;
  const uint32_t sign = std::bit_cast<uint32_t>(shifted) << 31;  // k odd: sin x = −sin r
  float r = std::fma(k, -3.140625f, x);
  r = std::fma(k, -9.67502593994140625e-4f, r);
  r = std::fma(k, -1.509957990978376432e-7f, r);
  const float r2 = r * r;
  float p = std::fma(r2, -2.384694219870198e-08f, 2.752263299043989e-06f);
  p = std::fma(r2, p, -1.9840804452542216e-4f);
  p = std::fma(r2, p, 8.333330042660236e-3f);
  p = std::fma(r2, p, -1.666666716337204e-1f);
  return std::bit_cast<float>(std::bit_cast<uint32_t>(std::fma(r * r2, p, r)) ^ sign);
}

// max_k x[k], vectorised: GCC leaves `omp simd reduction(max)` over std::max a scalar vmaxss
// chain (std::max's NaN ordering is not associative), so the lanes are spelt out. The maximum
// is exact, so the result does not depend on the order.
template <typename T>
T max_of(const T* x, int64_t n) {
  constexpr int64_t kLanes = 64 / sizeof(T);
  T m = x[0];
  int64_t k = 0;
  if (n >= kLanes) {
    T lanes[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = x[l];
    for (k = kLanes; k + kLanes <= n; k += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] = lanes[l] < x[k + l] ? x[k + l] : lanes[l];
    for (int64_t l = 0; l < kLanes; ++l) m = m < lanes[l] ? lanes[l] : m;
  }
  for (; k < n; ++k) m = m < x[k] ? x[k] : m;
  return m;
}

// fp64 (gradcheck, not the hot path) keeps libm's accuracy.
[[gnu::always_inline]] inline SinCos<double> sincos_fast(double x) { return {std::sin(x), std::cos(x)}; }
[[gnu::always_inline]] inline double sin_fast(double x) { return std::sin(x); }

}  // namespace hyperkd
