// The dot products of MIP generation (LayerKD-HN Eq. 2: a row of W times a code z), shared by the
// generation op and the fused step that generates the next step's weights while it updates W.
// Both must produce the same bits for the same row and code: a run that regenerates (after a
// resume, say) then reproduces exactly what the chained step would have given.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace hyperkd {

// Σ_k w[k]·z[k] in two vectors of 512-bit partial sums (two independent chains of FMAs, blocks of
// columns alternating between them), then the tail, then the lanes in order. One row at a time
// reads W as one sequential stream, which the hardware prefetchers follow: eight rows read a line
// of each in turn made the generation pass run at 0.5–0.6 of the copy rate, this at 0.8–1.2
// (bench/hyper_bandwidth.py --device cpu, VGG-11-bn's W).
template <typename scalar_t, typename acc_t>
inline acc_t generation_dot(const scalar_t* w, const acc_t* z, int64_t d) {
  constexpr int64_t L = 64 / sizeof(acc_t);
  typedef acc_t vec __attribute__((vector_size(64)));
  auto load = [](const scalar_t* p) {
    vec v;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(&v, p, sizeof v);
    } else {  // bf16/fp16 storage: widen through a buffer, which the compiler vectorises
      acc_t wide[L];
      for (int64_t j = 0; j < L; ++j) wide[j] = static_cast<acc_t>(p[j]);
      std::memcpy(&v, wide, sizeof v);
    }
    return v;
  };
  vec a = {}, b = {}, za, zb;
  int64_t k = 0;
  for (; k + 2 * L <= d; k += 2 * L) {
    std::memcpy(&za, z + k, sizeof za);
    std::memcpy(&zb, z + k + L, sizeof zb);
    a += load(w + k) * za;
    b += load(w + k + L) * zb;
  }
  a += b;
  acc_t acc = 0;
  for (; k < d; ++k) acc += static_cast<acc_t>(w[k]) * z[k];
  for (int64_t j = 0; j < L; ++j) acc += a[j];
  return acc;
}

}  // namespace hyperkd
