"""The GPU benchmark path of bench/bench_hyper.py on a CPU-only machine: argument parsing, the clear exit
without CUDA, the bf16 configuration's build, and the bandwidth script's byte counts against
the tensors the ops really read and write."""
import pytest
import torch

from bench import _hyper_step, bench_hyper, hyper_bandwidth
from hyperkd.kernels.hyper_generate import block_schedule
from hyperkd.ops.hyper_generate import op_geometry
from hyperkd.reference.hyper_generate import ADAM

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit without CUDA")


@no_cuda
@pytest.mark.parametrize("main, argv", [
    (_hyper_step.main, ["resnet20", "fused_bf16", "16,64,128", "sgd_momentum", "--device", "cuda"]),
    (bench_hyper.main, ["--device", "cuda", "--out", "unused.json"]),
    (hyper_bandwidth.main, []),
])
def test_cuda_runs_exit_with_the_reason_before_building_anything(main, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no CUDA device is available here"):
        main(argv)
    assert not any(tmp_path.iterdir())  # no results file was started


def test_device_option_and_the_default_gpu_rows():
    args = _hyper_step.parse_args(["vgg19_bn", "fused_bf16", "16,64,128", "sgd_momentum", "--device", "cuda"])
    assert (args.device, args.steps) == ("cuda", 3)
    assert _hyper_step.parse_args(["resnet20", "eager", "16,16,16", "sgd"]).device == "cpu"
    args, rows = bench_hyper.parse_rows(["--device", "cuda", "--out", "f.json"])
    assert rows == [[net, impl, "16,64,128", "sgd_momentum"] for net in ("vgg19_bn", "repvgg_a2")
                    for impl in ("fused_bf16", "fused_bf16_unchained", "eager")]
    with pytest.raises(SystemExit):
        bench_hyper.parse_rows(["--out", "f.json"])  # only CUDA has default rows
    with pytest.raises(SystemExit):
        bench_hyper.parse_rows(["--out", "f.json", "resnet20:fused-bf16:16,64,128:sgd"])  # no such IMPL


def test_fused_bf16_builds_bf16_w_and_state_and_steps():
    pytest.importorskip("hyperkd.models", reason="the benchmark needs the model zoo")
    model, opt, step = _hyper_step.build("resnet20", "fused_bf16", (16, 64, 128), "sgd_momentum")
    W = model.hypernet.W
    before = W.detach().clone()
    step()
    fused = model.hypernet.fused_step
    assert W.dtype == torch.bfloat16 and W.grad is None
    assert fused.state[0].dtype == torch.bfloat16  # the momentum buffer
    assert fused.step_count == 1 and not torch.equal(W, before)
    step()
    assert fused.chained == 1  # the model draws γ, so the second step used the first's generation


def test_the_bandwidth_rows_run_on_the_cpu_with_their_byte_counts():
    pytest.importorskip("hyperkd.models", reason="the benchmark needs the model zoo")
    args = hyper_bandwidth.parse_args(["--device", "cpu", "--network", "resnet20", "--hidden", "8,16",
                                       "--optimizer", "sgd_momentum", "--repeats", "1", "--copy-gib", "0.01"])
    result = hyper_bandwidth.run(args, torch.device("cpu"))
    P, d, rows = result["P"], result["d"], result["rows"]
    step = hyper_bandwidth.step_bytes(P, d, 1, 4, 1, 4)
    assert d == 16 and rows["fused W step"]["bytes"] == step
    assert rows["fused W step + next generation"]["bytes"] == step + (d + P) * 4  # z_next in, W·z out
    assert all(row["seconds"] > 0 for row in rows.values())


def test_byte_counts_are_the_bytes_of_what_each_op_reads_and_writes():
    shapes, B, d = [(6, 3, 3, 3), (6,), (10, 6, 1, 1)], 2, 16
    P = sum(torch.Size(s).numel() for s in shapes)
    geometry = op_geometry(shapes, [False] * len(shapes))
    W = torch.randn(P, d, dtype=torch.bfloat16)
    z, theta0 = torch.randn(B, d), torch.randn(P)
    out = torch.ops.hyperkd.hyper_generate(W, z, theta0, *geometry)
    read = W.nbytes + z.nbytes + theta0.nbytes
    assert hyper_bandwidth.generation_bytes(P, d, B, 2) == read + sum(o.nbytes for o in out)

    dz, dtheta = torch.ops.hyperkd.hyper_generate_backward(list(out), W, z, *geometry)
    programs = block_schedule([torch.Size(s).numel() for s in shapes], "cpu")[2]
    partial = torch.empty(programs, B, d)  # the Triton backward's per-program dz, written then summed
    assert hyper_bandwidth.backward_bytes(P, d, B, 2, programs) == (
        W.nbytes + sum(o.nbytes for o in out) + dtheta.nbytes + 2 * partial.nbytes + dz.nbytes)

    m, v = torch.zeros(P, d, dtype=torch.bfloat16), torch.zeros(P, d, dtype=torch.bfloat16)
    torch.ops.hyperkd.hyper_fused_step_(W, m, v, dtheta, z, ADAM, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 0)
    assert hyper_bandwidth.step_bytes(P, d, B, 2, 2, 2) == (
        2 * (W.nbytes + m.nbytes + v.nbytes) + dtheta.nbytes + z.nbytes)
