// Bit-packed positive masks on the CPU: the activation-boundary teacher summary (ρ = [g > 0],
// LayerKD-HN Eq. 8), 1/32 of an fp32 feature. Bit j of byte k is element 8k + j of a sample.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace hyperkd {
namespace {

at::Tensor pack_positive_mask_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "x: expected a tensor with a non-empty batch dimension");
  const auto xc = x.contiguous();
  const int64_t B = xc.size(0), N = xc.numel() / B, bytes = (N + 7) / 8;
  at::Tensor out = at::empty({B, bytes}, xc.options().dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "pack_positive_mask", [&] {
    const scalar_t* src = xc.data_ptr<scalar_t>();
    at::parallel_for(0, B * bytes, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b = k / bytes, base = (k % bytes) * 8;
        uint8_t byte = 0;
        for (int64_t j = 0; j < 8 && base + j < N; ++j)
          byte |= static_cast<uint8_t>(static_cast<float>(src[b * N + base + j]) > 0.f) << j;
        o[k] = byte;
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hyperkd, m) {
  m.def("pack_positive_mask(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(hyperkd, CPU, m) {
  m.impl("pack_positive_mask", &pack_positive_mask_cpu);
}

}  // namespace hyperkd
