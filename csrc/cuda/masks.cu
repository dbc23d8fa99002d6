// Bit-packed positive masks on the GPU: each thread builds one byte from 8 consecutive elements
// of a sample, so reads stay coalesced and the output is written once (ρ = [g > 0], Eq. 8).
#include <ATen/Dispatch.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace hyperkd {
namespace {

template <typename scalar_t>
__global__ void pack_positive_mask_kernel(const scalar_t* __restrict__ x, uint8_t* __restrict__ out,
                                          int64_t N, int64_t bytes, int64_t total) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= total) return;
  const int64_t b = k / bytes, base = (k % bytes) * 8;
  const scalar_t* row = x + b * N;
  uint8_t byte = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (base + j < N) byte |= static_cast<uint8_t>(static_cast<float>(row[base + j]) > 0.f) << j;
  out[k] = byte;
}

at::Tensor pack_positive_mask_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "x: expected a tensor with a non-empty batch dimension");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const int64_t B = xc.size(0), N = xc.numel() / B, bytes = (N + 7) / 8, total = B * bytes;
  at::Tensor out = at::empty({B, bytes}, xc.options().dtype(at::kByte));
  if (total == 0) return out;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "pack_positive_mask_cuda", [&] {
    pack_positive_mask_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<scalar_t>(), out.data_ptr<uint8_t>(), N, bytes, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(hyperkd, CUDA, m) {
  m.impl("pack_positive_mask", &pack_positive_mask_cuda);
}

}  // namespace hyperkd
