"""Bit-packed positive masks (the AB teacher summary, LayerKD-HN Eq. 8): C++ and CUDA vs reference."""
import os
import shutil

import pytest
import torch

from hyperkd import reference
from hyperkd.functional import pack_positive_mask


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 5, 3, 3), (4, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cpu_matches_reference_and_round_trips(shape, dtype):
    x = torch.randn(shape).to(dtype)
    x.view(-1)[::5] = 0  # zero is not positive
    packed = pack_positive_mask(x)
    per_sample = x[0].numel()
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], (per_sample + 7) // 8)
    assert torch.equal(packed, reference.pack_positive_mask(x))
    assert torch.equal(reference.unpack_mask(packed, per_sample), x.flatten(1) > 0)


def test_reads_channels_last_in_logical_order():
    x = torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)
    assert torch.equal(pack_positive_mask(x), reference.pack_positive_mask(x.contiguous()))


def test_is_one_thirty_second_of_fp32():
    x = torch.randn(8, 64, 32, 32)
    packed = pack_positive_mask(x)
    assert packed.numel() * packed.element_size() * 32 == x.numel() * x.element_size()


def test_fake_impl_and_opcheck():
    torch.library.opcheck(torch.ops.hyperkd.pack_positive_mask, (torch.randn(3, 2, 5, 5),))


def test_bad_input():
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        pack_positive_mask(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x: expected a tensor with a non-empty batch"):
        pack_positive_mask(torch.ones(0, 3))


@pytest.mark.skipif(os.environ.get("HYPERKD_NO_CUDA") == "1" or not shutil.which("nvcc")
                    or torch.version.cuda is None, reason="CUDA sources were not built")
def test_cuda_kernel_was_compiled_and_registered():
    """CI compiles csrc/cuda/*.cu without a GPU; the CUDA kernel must be registered."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key("hyperkd::pack_positive_mask", "CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    x = torch.randn(16, 64, 31, 31, device="cuda").to(dtype)
    assert torch.equal(pack_positive_mask(x).cpu(), reference.pack_positive_mask(x.cpu()))
