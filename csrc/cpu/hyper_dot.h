// The dot products of MIP generation (LayerKD-HN Eq. 2: a row of W times a code z), shared by the
// generation op and the fused step that generates the next step's weights while it updates W.
// Both must produce the same bits for the same row and code: a run that regenerates (after a
// resume, say) then reproduces exactly what the chained step would have given.
#pragma once

#include <cstdint>

namespace hyperkd {

// Each row is summed in kDotLanes independent partial sums (a single running sum is a serial chain
// the compiler may not reorder, so it would not vectorise), k ascending, then the lanes in order.
constexpr int64_t kDotLanes = 8;
// Rows dotted together: one row's lanes form one chain of dependent FMAs, whose latency (not
// memory) bounded a row-at-a-time loop; kDotRows rows interleaved keep that many chains in flight.
constexpr int64_t kDotRows = 8;

// out[r] = Σ_k w[r·stride + k]·z[k] for r < R, each row summed exactly as generation_dot sums it.
template <int64_t R, typename scalar_t, typename acc_t>
inline void generation_dots(const scalar_t* w, int64_t stride, const acc_t* z, int64_t d, acc_t* out) {
  acc_t lanes[R][kDotLanes] = {};
  int64_t k = 0;
  for (; k + kDotLanes <= d; k += kDotLanes)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < kDotLanes; ++j)
        lanes[r][j] += static_cast<acc_t>(w[r * stride + k + j]) * z[k + j];
  for (int64_t r = 0; r < R; ++r) {
    acc_t acc = 0;
    for (int64_t t = k; t < d; ++t) acc += static_cast<acc_t>(w[r * stride + t]) * z[t];
    for (int64_t j = 0; j < kDotLanes; ++j) acc += lanes[r][j];
    out[r] = acc;
  }
}

template <typename scalar_t, typename acc_t>
inline acc_t generation_dot(const scalar_t* w, const acc_t* z, int64_t d) {
  acc_t out;
  generation_dots<1>(w, 0, z, d, &out);
  return out;
}

}  // namespace hyperkd
