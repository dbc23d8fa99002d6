"""`hyperkd plan`: the per-component table, the budget verdict, the suggested switches and its
argument errors. Every model is planned on the meta device, so VGG-19-bn costs nothing here."""
import re

import pytest

from hyperkd.cli import build_parser, main
from hyperkd.hyper.memory import parse_size

COMPONENTS = ("W", "W gradient", "optimizer state", "activations", "teacher", "other", "total")


def plan(capsys, *argv):
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def row_size(out: str, label: str) -> int:
    """Bytes in the table row ``label`` (first match), back from its printed figure."""
    match = re.search(rf"^  {re.escape(label)} +([\d.]+ (?:B|KiB|MiB|GiB|TiB))", out, re.M)
    assert match, f"no row {label!r} in\n{out}"
    return parse_size(match.group(1))


def test_small_model_lists_every_component_and_fits(capsys):
    code, out, _ = plan(capsys, "--model", "resnet20", "--batch-size", "16", "--kd", "at0", "--budget", "2GiB")
    assert code == 0
    for label in COMPONENTS:
        assert row_size(out, label) > 0
    assert "fits the budget of 2.00 GiB" in out
    assert "suggestion" not in out


def test_vgg19_bn_output_layer_matches_the_issue_table(capsys):
    code, out, _ = plan(capsys, "--model", "vgg19_bn", "--hidden", "16,64,128", "--batch-size", "16",
                        "--optimizer", "sgd", "--budget", "15GiB")
    assert code == 1
    assert re.search(r"^  W +9\.55 GiB", out, re.M)
    assert re.search(r"^  teacher +0 B +no KD", out, re.M)
    assert "suggestion: fused step -> 9.83 GiB" in out
    assert "hyperkd train flags: --fused-step" in out


def test_vgg19_bn_unfused_momentum_does_not_fit_and_the_suggestion_does(capsys):
    code, out, _ = plan(capsys, "--model", "vgg19_bn", "--batch-size", "16", "--optimizer", "sgd_momentum",
                        "--kd", "at0", "--data", "cifar100", "--budget", "15GiB")
    assert code == 1
    assert "does not fit the budget of 15.00 GiB" in out
    suggestion = re.search(r"^suggestion: (.*) -> ([\d.]+ \w+)$", out, re.M)
    assert suggestion and "fused step" in suggestion.group(1)
    assert parse_size(suggestion.group(2)) <= parse_size("15GiB")
    flags = re.search(r"^  hyperkd train flags: (.*)$", out, re.M).group(1).split()
    assert "--fused-step" in flags and flags[flags.index("--state-dtype") + 1] == "bf16"
    # Every printed flag is one `hyperkd train` takes.
    train_flags = {opt for action in build_parser("train")[1]["train"]._actions for opt in action.option_strings}
    assert {f for f in flags if f.startswith("--")} <= train_flags, train_flags


def test_a_lone_switch_is_preferred_to_a_stack_and_batches_are_halved(capsys):
    code, out, _ = plan(capsys, "--model", "resnet20", "--batch-size", "1024", "--fused-step", "--hidden",
                        "16,16,16", "--optimizer", "sgd", "--budget", "1GiB")
    assert code == 1
    assert "suggestion: batch size 256 ->" in out  # 512 does not fit, alone or stacked
    assert "hyperkd train flags: --batch-size 256" in out


def test_nothing_fits_says_so(capsys):
    code, out, _ = plan(capsys, "--model", "resnet20", "--batch-size", "4", "--budget", "1MiB")
    assert code == 1
    assert "nothing fits 1.00 MiB" in out


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet20", "--budget", "15"], "--budget: expected a size such as 15GiB"),
    (["--model", "resnet20", "--budget", "15XB"], "--budget: expected a size such as 15GiB"),
    (["--model", "resnet21"], "--model: unknown model 'resnet21'; did you mean"),
    (["--model", "resnet20", "--hidden", "16,,64"], "--hidden: expected positive widths separated by commas"),
    (["--model", "resnet20", "--kd", "at9"], "--kd: method: unknown KD method 'at9'"),
    (["--model", "resnet20", "--state-dtype", "bf16"], "--state-dtype: bf16 storage is stepped only by the fused"),
])
def test_argument_errors_name_the_argument(capsys, argv, message):
    code, _, err = plan(capsys, *argv, "--batch-size", "8")
    assert code == 2
    assert f"hyperkd plan: error: {message}" in err
