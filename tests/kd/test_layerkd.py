"""Feature taps and LayerKD: the loss equals layerwise_loss on the raw features, the teacher keeps
only summaries, and bad set-ups are reported with the module path."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import hyperkd.kd as kd
from tests.kd.nets import TinyNet, nets
from tests.tolerances import assert_close

CONVS = ["features.0", "features.3", "features.6"]


def _run(layerkd, student, teacher, x, **kwargs):
    with torch.no_grad(), layerkd.teacher_taps.capture() as t:
        teacher(x)
    with layerkd.student_taps.capture() as s:
        student(x)
    return layerkd(s, t, **kwargs)


def test_default_taps_are_every_conv2d():
    student, _ = nets()
    assert kd.modules_of_type(student) == CONVS


@pytest.mark.parametrize("method", ["at1:p=2", "ab:margin=1"])
def test_layerkd_equals_layerwise_loss_on_raw_features(method):
    student, teacher = nets()
    x = torch.randn(4, 3, 8, 8)
    raw_s = kd.FeatureTaps(student, CONVS, "student")
    raw_t = kd.FeatureTaps(teacher, CONVS, "teacher")
    schedule = kd.GaussianSpike(sigma=1.0)
    layerkd = kd.LayerKD(method, student, teacher, layers=CONVS, schedule=schedule)
    with raw_s.capture() as f, raw_t.capture() as g:
        total, terms = _run(layerkd, student, teacher, x, epoch=2, epochs=10)
    lambdas = schedule.weights(2, 10, 3)
    expected, expected_terms = kd.layerwise_terms(method, f.values(), g.values(), lambdas)
    assert_close(total, expected, torch.float32)
    assert layerkd.term_names() == CONVS
    assert_close(terms, expected_terms, torch.float32)
    total.backward()
    assert student.features[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method, shape, dtype", [
    ("ab", (2, (6 * 8 * 8 + 7) // 8), torch.uint8),  # ρ packed to bits
    ("at0", (2, 8 * 8), torch.float32),  # normalised attention map
    ("sp", (2, 2), torch.float32),  # normalised Gram
    ("rkd-da", (2, 2), torch.float32),  # Gram
])
def test_teacher_keeps_only_the_summary(method, shape, dtype):
    student, teacher = nets()
    layerkd = kd.LayerKD(method, student, teacher, tap="conv")
    with torch.no_grad(), layerkd.teacher_taps.capture() as captured:
        teacher(torch.randn(2, 3, 8, 8))
    kept = captured.values()
    assert len(kept) == len(CONVS) > 0
    assert all(t.dtype == dtype and t.shape == shape for t in kept)


def test_taps_after_batchnorm_are_configurable():
    student, teacher = nets()
    bns = kd.modules_of_type(student, (torch.nn.BatchNorm2d,))
    layerkd = kd.LayerKD("at0", student, teacher, layers=bns)
    total, terms = _run(layerkd, student, teacher, torch.randn(2, 3, 8, 8))
    assert layerkd.term_names() == ["features.1", "features.4", "features.7"] and total > 0
    assert kd.LayerKD("at0", student, teacher, tap="bn").layers == bns


def test_a_missing_module_is_named_with_its_net():
    student, teacher = nets()
    with pytest.raises(ValueError, match=r"teacher: TinyNet has no module named 'features.9' to tap; "
                                         r"close names: features.8"):
        kd.FeatureTaps(teacher, ["features.0", "features.9"], "teacher")
    with pytest.raises(ValueError, match=r"student: TinyNet has no module named 'head.0'"):
        kd.LayerKD("at0", student, teacher, layers=["head.0"])


def test_an_unknown_tap_lists_the_valid_ones_and_close_matches():
    student, teacher = nets()
    with pytest.raises(ValueError, match=r"tap: unknown tap 'convs'; valid taps are conv, bn, penultimate, "
                                         r"logits \(did you mean conv\?\)"):
        kd.LayerKD("at0", student, teacher, tap="convs")


def test_mismatched_shapes_name_the_module_path():
    student, teacher = TinyNet(width=6), TinyNet(width=4)
    layerkd = kd.LayerKD("at0", student, teacher)
    with pytest.raises(ValueError, match=r"layer 'features.0': student feature \(2, 6, 8, 8\) and teacher "
                                         r"feature \(2, 4, 8, 8\) differ in shape; pass --adapter 1x1"):
        _run(layerkd, student, teacher, torch.randn(2, 3, 8, 8))


def test_debug_names_the_layer_with_a_non_finite_term():
    student, teacher = nets()
    layerkd = kd.LayerKD("at0", student, teacher, debug=True)
    with torch.no_grad():
        student.features[3].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"layer 'features.3' is nan"):
        _run(layerkd, student, teacher, torch.randn(2, 3, 8, 8))


def test_the_loss_needs_both_nets_to_have_run():
    student, teacher = nets()
    layerkd = kd.LayerKD("at0", student, teacher)
    with torch.no_grad(), layerkd.teacher_taps.capture() as t:
        pass
    with layerkd.student_taps.capture() as s:
        student(torch.randn(2, 3, 8, 8))
    with pytest.raises(RuntimeError, match=r"teacher: tapped module 'features.0' did not run during the capture"):
        layerkd(s, t)


def test_remove_unhooks_both_nets():
    student, teacher = nets()
    layerkd = kd.LayerKD("at0", student, teacher)
    layerkd.remove()
    with layerkd.student_taps.capture() as s:
        student(torch.randn(2, 3, 8, 8))
    assert s.features == {}


def test_features_are_kept_only_inside_a_capture():
    student, teacher = nets()
    layerkd = kd.LayerKD("at0", student, teacher)
    student(torch.randn(2, 3, 8, 8))
    with layerkd.student_taps.capture() as s:
        pass
    assert s.features == {}
    with pytest.raises(RuntimeError, match="nested capture"):
        with layerkd.student_taps.capture(), layerkd.student_taps.capture():
            pass


_PEAK_SCRIPT = textwrap.dedent("""
    import torch
    import hyperkd.kd as kd
    from hyperkd.runtime import reset_peak_memory
    from torch import nn

    def rss(key):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))

    torch.set_num_threads(1)
    teacher = nn.Sequential(*[nn.Conv2d(16, 16, 3, padding=1) for _ in range(24)]).eval()
    names = kd.modules_of_type(teacher)
    x = torch.randn(32, 16, 48, 48)
    for keep in ("raw", "ab", "at0"):
        taps = kd.FeatureTaps(teacher, names, "teacher",
                              keep=None if keep == "raw" else kd.make_method(keep).summarise)
        with torch.no_grad():
            with taps.capture():
                teacher(x[:1])  # warm-up: one-off allocations are not part of the peak
            if not reset_peak_memory(torch.device("cpu")):  # VmHWM, where the system allows
                raise SystemExit("peak not reset")
            before = rss("VmRSS")
            with taps.capture():
                teacher(x)
                print(keep, rss("VmHWM") - before)
        taps.remove()
""")


def test_teacher_peak_memory_with_summaries_is_well_below_raw_features():
    # 24 layers × 32×16×48×48 fp32 = 24 × 4.5 MiB kept raw; the AB mask is 1/32 of that and the
    # AT map 1/16, so the summarised peak is a few live activations and the conv workspace. A subprocess
    # keeps the peak RSS free of this process's other allocations.
    # A fixed mmap threshold gives every tensor its own pages, returned to the OS when freed: with
    # glibc's moving threshold, whether earlier runs' freed blocks were still resident changed
    # the measured peaks by 15 MB from run to run.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10)}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, env=env)
    if out.returncode and "peak not reset" in out.stderr:
        pytest.skip("the RSS high-water mark cannot be reset here (/proc/self/clear_refs)")
    assert out.returncode == 0, out.stderr
    peak = {keep: int(value) for keep, value in (line.split() for line in out.stdout.splitlines())}
    assert peak["raw"] > 24 * 4.5 * 2 ** 20 * 0.9
    assert peak["ab"] < peak["raw"] / 3
    assert peak["at0"] < peak["raw"] / 3
