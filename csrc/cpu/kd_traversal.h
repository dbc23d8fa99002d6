// Element traversal shared by the fused KD kernels that pair a strided student feature with a
// flat, per-sample teacher summary (bit masks, NCHW-ordered buffers): both orders are visited
// innermost along the feature's smallest stride, so NCHW and channels_last inputs both stream.
#pragma once
#include <cstdint>

#include "layers.h"

namespace hyperkd {

// fn(logical NCHW index c·HW + hw of the sample, offset in v, offset in u).
template <typename Fn>
inline void for_each_logical(const FeatureView& v, const FeatureView& u, Fn&& fn) {
  const int64_t HW = v.HW();
  if (v.sc >= v.sw) {
    for (int64_t c = 0; c < v.C; ++c)
      for (int64_t h = 0; h < v.H; ++h)
        for (int64_t w = 0; w < v.W; ++w)
          fn(c * HW + h * v.W + w, c * v.sc + h * v.sh + w * v.sw, c * u.sc + h * u.sh + w * u.sw);
  } else {
    for (int64_t h = 0; h < v.H; ++h)
      for (int64_t w = 0; w < v.W; ++w)
        for (int64_t c = 0; c < v.C; ++c)
          fn(c * HW + h * v.W + w, c * v.sc + h * v.sh + w * v.sw, c * u.sc + h * u.sh + w * u.sw);
  }
}

// Bit e of one sample's packed mask (little-endian within a byte, as pack_positive_mask writes).
inline bool mask_bit(const uint8_t* row, int64_t e) { return (row[e >> 3] >> (e & 7)) & 1; }

}  // namespace hyperkd
