"""RepVGG: the fused deploy form computes what the multi-branch training form computes."""
import torch

from hyperkd import models
from hyperkd.models.repvgg import RepVGG, RepVGGBlock

# RepVGG-A's 22 blocks at an eighth of A0's width: the same structure at a fraction of the cost.
NARROW_WIDTHS = (0.125, 0.125, 0.125, 0.25)


def fused_and_unfused(model, randomized_bn):
    model = randomized_bn(model).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        after = model.reparameterize()(x)
    return model, before, after


def test_reparameterized_repvgg_a0_gives_equal_outputs(randomized_bn):
    model, before, after = fused_and_unfused(models.create("repvgg_a0"), randomized_bn)
    # 22 fused blocks in fp32: differences are rounding, far below the logits' spread.
    scale = before.abs().max()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5 * scale.item())
    assert before.std() > 1e-3 * scale  # the comparison is not between near-constant outputs


def test_reparameterize_leaves_one_biased_conv_per_block(randomized_bn):
    model, _, _ = fused_and_unfused(RepVGG(NARROW_WIDTHS), randomized_bn)
    keys = list(model.state_dict())
    assert all(key.split(".")[-2] == "rbr_reparam" or key.startswith("linear.") for key in keys)
    assert "stage1.1.rbr_reparam.bias" in keys
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert len(blocks) == 22 and len(keys) == 2 * 22 + 2
    assert model.stage2[0].rbr_reparam.stride == (2, 2)


def test_block_with_identity_branch_fuses_exactly(randomized_bn):
    block = randomized_bn(RepVGGBlock(8, 8)).eval()
    assert block.rbr_identity is not None
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    block = block.double()
    with torch.no_grad():
        before = block(x)
        after = block.reparameterize()(x)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_reparameterize_twice_is_a_no_op(randomized_bn):
    model, _, _ = fused_and_unfused(RepVGG(NARROW_WIDTHS), randomized_bn)
    weight = model.stage0.rbr_reparam.weight
    model.reparameterize()
    assert model.stage0.rbr_reparam.weight is weight


def test_fused_checkpoint_loads_into_a_fresh_training_form_model(tmp_path, randomized_bn):
    model, _, _ = fused_and_unfused(RepVGG(NARROW_WIDTHS), randomized_bn)
    torch.save(model.state_dict(), tmp_path / "fused.pt")
    loaded = models.load_checkpoint(RepVGG(NARROW_WIDTHS), tmp_path / "fused.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.stage0.rbr_reparam is not None


def test_training_form_checkpoint_round_trips(tmp_path, randomized_bn):
    model = randomized_bn(RepVGG(NARROW_WIDTHS)).eval()
    torch.save(model.state_dict(), tmp_path / "train.pt")
    loaded = models.load_checkpoint(RepVGG(NARROW_WIDTHS), tmp_path / "train.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.stage0.rbr_reparam is None
