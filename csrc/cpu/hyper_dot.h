// The one dot product of MIP generation (LayerKD-HN Eq. 2: a row of W times a code z), shared by
// the generation op and the fused step that generates the next step's weights while it updates W.
// Both must produce the same bits for the same row and code: a run that regenerates (after a
// resume, say) then reproduces exactly what the chained step would have given.
#pragma once

#include <cstdint>

namespace hyperkd {

// Σ_k w[k]·z[k] with kLanes independent partial sums: a single running sum is a serial chain
// the compiler may not reorder, so it would not vectorise.
constexpr int64_t kDotLanes = 8;
template <typename scalar_t, typename acc_t>
inline acc_t generation_dot(const scalar_t* w, const acc_t* z, int64_t d) {
  acc_t lanes[kDotLanes] = {};
  int64_t k = 0;
  for (; k + kDotLanes <= d; k += kDotLanes)
    for (int64_t j = 0; j < kDotLanes; ++j) lanes[j] += static_cast<acc_t>(w[k + j]) * z[k + j];
  acc_t acc = 0;
  for (; k < d; ++k) acc += static_cast<acc_t>(w[k]) * z[k];
  for (int64_t j = 0; j < kDotLanes; ++j) acc += lanes[j];
  return acc;
}

}  // namespace hyperkd
