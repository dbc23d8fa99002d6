// Fused MIP weight generation on the CPU (LayerKD-HN Eq. 2–3): θ = W·z + θ0 for B_γ codes z (θ0 is
// the output layer's bias, the base weights), or θ = carried + θ0 when the fused step of the
// previous training step already generated carried = W·z while it updated W,
// read W once and write every layer's kernel straight into its final (contiguous or
// channels_last) layout. Backward makes one pass over W for dz, and packs dθ (B_γ×P, the factor
// of W's rank-B_γ gradient dθᵀ·z). It returns no Σ_γ dθ (θ0's gradient): for one γ that
// is dθ's only row, and a second P-vector beside it would raise the step's peak memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include "hyper_dot.h"

namespace hyperkd {
namespace {

// Rows of W handled by one task; its partial dz (B_γ×d) is reduced after the parallel pass.
constexpr int64_t kRowsPerTask = 4096;

// One generated tensor: its logical sizes padded to 4-D, the strides it is written with inside
// one γ's sample, and its first row in θ.
struct LayerGeometry {
  std::array<int64_t, 4> size, stride;
  int64_t offset, numel;
  // Element offset of logical (row-major) index p.
  int64_t address(int64_t p) const { return strided_address(p, size, stride.data()); }

  // Offset of logical index p through `strides` (dims padded to 4 like `size`): eight integer
  // divisions per element, which cost more than the element's dot product on wide layers, so
  // row-major strides (where the offset is p) skip them.
  static int64_t strided_address(int64_t p, const std::array<int64_t, 4>& size, const int64_t* strides) {
    int64_t a = 0;
    for (int k = 3; k >= 0; --k) {
      a += (p % size[k]) * strides[k];
      p /= size[k];
    }
    return a;
  }

  // Whether `strides` address logical index p at offset p (sizes of 1 take any stride).
  bool row_major(const int64_t* strides) const {
    int64_t expected = 1;
    for (int k = 3; k >= 0; --k) {
      if (size[k] != 1 && strides[k] != expected) return false;
      expected *= size[k];
    }
    return true;
  }
};

std::vector<LayerGeometry> geometry(at::IntArrayRef ndims, at::IntArrayRef sizes,
                                    at::IntArrayRef channels_last) {
  const int64_t L = ndims.size();
  TORCH_CHECK(L > 0, "ndims: expected at least one generated tensor");
  TORCH_CHECK(static_cast<int64_t>(sizes.size()) == 4 * L, "sizes: expected 4 sizes per tensor (",
              4 * L, "), got ", sizes.size());
  TORCH_CHECK(static_cast<int64_t>(channels_last.size()) == L, "channels_last: expected ", L,
              " flags, got ", channels_last.size());
  std::vector<LayerGeometry> geo(L);
  int64_t offset = 0;
  for (int64_t l = 0; l < L; ++l) {
    auto& g = geo[l];
    TORCH_CHECK(ndims[l] >= 1 && ndims[l] <= 4, "ndims[", l, "]: expected 1 to 4, got ", ndims[l]);
    for (int k = 0; k < 4; ++k) {
      g.size[k] = sizes[4 * l + k];
      TORCH_CHECK(g.size[k] > 0, "sizes[", 4 * l + k, "]: expected a positive size");
    }
    const auto& n = g.size;
    if (channels_last[l]) {
      TORCH_CHECK(ndims[l] == 4, "channels_last[", l, "]: needs a 4-D tensor");
      g.stride = {n[1] * n[2] * n[3], 1, n[3] * n[1], n[1]};
    } else {
      g.stride = {n[1] * n[2] * n[3], n[2] * n[3], n[3], 1};
    }
    g.numel = n[0] * n[1] * n[2] * n[3];
    g.offset = offset;
    offset += g.numel;
  }
  return geo;
}

std::vector<int64_t> output_shape(int64_t B, const LayerGeometry& g, int64_t ndim) {
  std::vector<int64_t> shape{B};
  for (int k = 4 - ndim; k < 4; ++k) shape.push_back(g.size[k]);
  return shape;
}

std::vector<int64_t> output_strides(const LayerGeometry& g, int64_t ndim) {
  std::vector<int64_t> strides{g.numel};
  for (int k = 4 - ndim; k < 4; ++k) strides.push_back(g.stride[k]);
  return strides;
}

void check_generation_inputs(const at::Tensor& W, const at::Tensor& z) {
  TORCH_CHECK(W.dim() == 2 && W.is_contiguous(), "W: expected a contiguous P×d matrix");
  TORCH_CHECK(z.dim() == 2 && z.is_contiguous() && z.size(1) == W.size(1),
              "z: expected a contiguous B_γ×", W.size(1), " code matrix, got ", z.sizes());
  const auto acc = W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(z.scalar_type() == acc, "z: expected dtype ", acc, " for W of dtype ", W.scalar_type());
}

std::vector<at::Tensor> hyper_generate_cpu(const at::Tensor& W, const at::Tensor& z, const at::Tensor& theta0, at::IntArrayRef ndims,
                                           at::IntArrayRef sizes, at::IntArrayRef channels_last,
                                           const std::optional<at::Tensor>& carried) {
  check_generation_inputs(W, z);
  const auto geo = geometry(ndims, sizes, channels_last);
  const int64_t P = W.size(0), d = W.size(1), B = z.size(0), L = geo.size();
  TORCH_CHECK(geo.back().offset + geo.back().numel == P, "sizes: the tensors hold ",
              geo.back().offset + geo.back().numel, " values but W has ", P, " rows");
  const bool has_carried = carried.has_value() && carried->defined();
  if (has_carried)
    TORCH_CHECK(carried->dim() == 2 && carried->size(0) == B && carried->size(1) == P &&
                    carried->is_contiguous() && carried->scalar_type() == z.scalar_type(),
                "carried: expected a contiguous ", z.scalar_type(), " ", B, "×", P, " matrix (W·z)");
  TORCH_CHECK(theta0.dim() == 1 && theta0.size(0) == P && theta0.is_contiguous() &&
                  theta0.scalar_type() == z.scalar_type(),
              "theta0: expected a contiguous P-vector of z's dtype");
  std::vector<at::Tensor> out;
  for (int64_t l = 0; l < L; ++l)
    out.push_back(at::empty_strided(output_shape(B, geo[l], ndims[l]), output_strides(geo[l], ndims[l]),
                                    z.options()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "hyper_generate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = W.data_ptr<scalar_t>();
    const acc_t* zz = z.data_ptr<acc_t>();
    const acc_t* t0 = theta0.data_ptr<acc_t>();
    const acc_t* ca = has_carried ? carried->data_ptr<acc_t>() : nullptr;
    for (int64_t l = 0; l < L; ++l) {
      const auto& g = geo[l];
      acc_t* o = out[l].data_ptr<acc_t>();
      const bool row_major = g.row_major(g.stride.data());
      at::parallel_for(0, g.numel, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const int64_t row = g.offset + p;
          const int64_t where = row_major ? p : g.address(p);  // in each γ's sample of the output
          for (int64_t s = 0; s < B; ++s) {
            const acc_t dot = ca ? ca[s * P + row] : generation_dot(w + row * d, zz + s * d, d);
            o[s * g.numel + where] = dot + t0[row];
          }
        }
      });
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hyper_generate_backward_cpu(
    at::TensorList grads, const at::Tensor& W, const at::Tensor& z, at::IntArrayRef ndims,
    at::IntArrayRef sizes, at::IntArrayRef channels_last) {
  check_generation_inputs(W, z);
  const auto geo = geometry(ndims, sizes, channels_last);
  const int64_t P = W.size(0), d = W.size(1), B = z.size(0), L = geo.size();
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == L, "grads: expected ", L, " tensors, got ", grads.size());
  // Gradients arrive in whatever strides autograd produced: read each through its own strides.
  std::vector<std::vector<int64_t>> grad_strides(L);
  for (int64_t l = 0; l < L; ++l) {
    const auto& gr = grads[l];
    TORCH_CHECK(gr.scalar_type() == z.scalar_type() && gr.numel() == B * geo[l].numel &&
                    gr.dim() == ndims[l] + 1 && gr.size(0) == B,
                "grads[", l, "]: expected a ", z.scalar_type(), " tensor of the generated shape");
    std::vector<int64_t> st(5, 0);
    for (int64_t k = 0; k < ndims[l]; ++k) st[1 + 4 - ndims[l] + k] = gr.stride(k + 1);
    st[0] = gr.stride(0);
    grad_strides[l] = st;
  }
  struct Task { int64_t layer, begin, end; };
  std::vector<Task> tasks;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t r = 0; r < geo[l].numel; r += kRowsPerTask)
      tasks.push_back({l, r, std::min(r + kRowsPerTask, geo[l].numel)});
  const int64_t T = tasks.size();
  auto opts = z.options();
  at::Tensor partial = at::zeros({T, B, d}, opts);
  at::Tensor dtheta = at::empty({B, P}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "hyper_generate_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = W.data_ptr<scalar_t>();
    acc_t* part = partial.data_ptr<acc_t>();
    acc_t* dt = dtheta.data_ptr<acc_t>();
    at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        const auto& task = tasks[t];
        const auto& g = geo[task.layer];
        const auto& st = grad_strides[task.layer];
        const acc_t* gr = grads[task.layer].data_ptr<acc_t>();
        acc_t* dz = part + t * B * d;
        const bool row_major = g.row_major(st.data() + 1);
        for (int64_t p = task.begin; p < task.end; ++p) {
          // Logical index → the gradient's own strides (dims padded to 4 like the geometry).
          const int64_t a = row_major ? p : LayerGeometry::strided_address(p, g.size, st.data() + 1);
          const scalar_t* row = w + (g.offset + p) * d;
          for (int64_t s = 0; s < B; ++s) {
            const acc_t gv = gr[s * st[0] + a];
            dt[s * P + g.offset + p] = gv;
            for (int64_t k = 0; k < d; ++k) dz[s * d + k] += gv * static_cast<acc_t>(row[k]);
          }
        }
      }
    });
  });
  return {partial.sum(0), dtheta};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("hyper_generate(Tensor W, Tensor z, Tensor theta0, int[] ndims, int[] sizes, "
        "int[] channels_last, Tensor? carried=None) -> Tensor[]");
  m.def("hyper_generate_backward(Tensor[] grads, Tensor W, Tensor z, int[] ndims, int[] sizes, "
        "int[] channels_last) -> (Tensor dz, Tensor dtheta)");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("hyper_generate", &hyper_generate_cpu);
  m.impl("hyper_generate_backward", &hyper_generate_backward_cpu);
}

}  // namespace hyperkd
