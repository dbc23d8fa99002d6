"""What a user can get wrong ends as one line `hyperkd CMD: error: ...` and exit status 2, before
anything is written; YAML values go through their flag's parsing; --help shows every default."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

from hyperkd import cli, models
from hyperkd.commands import bench
from tests.train.conftest import tiny_digits  # noqa: F401 (digits cut to a few dozen images)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained resnet20 for digits' 10 classes: a teacher, or a net to represent."""
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    torch.save({"state_dict": models.create("resnet20", num_classes=10).state_dict()}, path)
    return path


def commands(checkpoint, out):
    """One cheap run of each training subcommand, writing to ``out``."""
    student = ["--model", "resnet20", "--hidden", "4,8", "--epochs", "1", "--batch-size", "32", "--out", str(out)]
    return {
        "teacher": ["teacher", "--model", "resnet20", "--epochs", "1", "--batch-size", "32", "--out", str(out)],
        "train": ["train", "--no-kd", *student],
        "sweep": ["sweep", "--methods", "at0", "--teacher", str(checkpoint), "--kd-weight", "0.03", *student],
        "siren": ["siren", "reconstruct", "--model", "resnet20", "--checkpoint", str(checkpoint),
                  "--epochs", "1", "--out", str(out)],
        "demo": ["demo", "--epochs", "1", "--teacher-epochs", "1", "--out", str(out)],
    }


def one_error_line(capsys, command):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"hyperkd {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["teacher", "train", "sweep", "siren", "demo"])
def test_an_out_that_is_a_file_is_one_error_line(tiny_digits, checkpoint, tmp_path, capsys, command):
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    assert cli.main(commands(checkpoint, file)[command]) == 2
    assert "--out: " in one_error_line(capsys, command)
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["teacher", "train", "sweep", "siren", "demo", "eval"])
def test_a_bad_device_is_one_error_line(tiny_digits, checkpoint, tmp_path, capsys, command):
    argv = (["eval", "--model", "resnet20", "--checkpoint", str(checkpoint)] if command == "eval"
            else commands(checkpoint, tmp_path / "o")[command])
    assert cli.main(argv + ["--device", "foo"]) == 2
    assert "--device: 'foo' is not a torch device" in one_error_line(capsys, command)
    assert not (tmp_path / "o" / "config.yaml").exists()


@pytest.mark.parametrize("command", ["teacher", "train", "sweep"])
def test_a_diverging_lr_is_one_error_line(tiny_digits, checkpoint, tmp_path, capsys, command):
    assert cli.main(commands(checkpoint, tmp_path)[command] + ["--lr", "1e38"]) == 2
    line = one_error_line(capsys, command)
    assert "loss term '" in line and " at epoch 0, step " in line
    if command == "sweep":  # every run diverged: recorded, reported, and the sweep still ended
        assert line.startswith("hyperkd sweep: error: 2 run(s) diverged")
        table = (tmp_path / "results.md").read_text()
        assert "| No-KD (MIP) | diverged (1/1) |" in table and "| at0 | diverged (1/1) |" in table


def replaced(argv, changes: dict) -> list:
    """``argv`` with each flag of ``changes`` given a new value (None: the switch removed)."""
    argv = list(argv)
    for flag, value in changes.items():
        at = argv.index(flag)
        if value is None:
            del argv[at]
        else:
            argv[at + 1] = value
    return argv


def test_a_rejected_command_leaves_the_folder_as_it_was(tiny_digits, checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--no-kd", "--model", "resnet20", "--hidden", "4,8", "--epochs", "1", "--batch-size", "32",
            "--lr", "0.05", "--out", str(out)]
    assert cli.main(argv) == 0
    config, best = (out / "config.yaml").read_text(), (out / "best.pt").read_bytes()
    capsys.readouterr()
    refused = [  # (flags changed, flags added) → what the one error line names
        ({"--model": "resnet21"}, [], "unknown model 'resnet21'"),
        ({"--lr": "0.2"}, [], "already holds a finished run; continue it with --resume, start it afresh "
                              "with --overwrite"),
        ({"--lr": "0.2"}, ["--resume"], "--lr: the run in"),
        ({"--hidden": "4,16"}, ["--resume"], "--hidden: the run in"),
        ({}, ["--optimizer", "adam", "--resume"], "--optimizer: the run in"),
        ({"--no-kd": None}, ["--kd", "at0", "--teacher", str(checkpoint), "--resume"], "--kd: the run in"),
    ]
    for changes, added, message in refused:
        changed = replaced(argv, changes)
        assert cli.main(changed + added) == 2, changes
        assert message in one_error_line(capsys, "train"), changes
        assert (out / "config.yaml").read_text() == config and (out / "best.pt").read_bytes() == best
    assert cli.main(replaced(argv, {"--epochs": "2"}) + ["--resume"]) == 0  # a larger --epochs extends the run
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1] and json.loads(lines[1])["lr"] > 0


def test_teacher_checks_everything_before_writing_its_config(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model: resnet20\n")
    assert cli.main(["teacher", "--model", "resnet21", "--epochs", "1", "--out", str(tmp_path)]) == 2
    assert "unknown model 'resnet21'" in one_error_line(capsys, "teacher")
    assert (tmp_path / "config.yaml").read_text() == "model: resnet20\n"


@pytest.mark.parametrize("flag, value, message", [
    ("--lambda0", "-1", "lambda0: expected a finite value >= 0, got -1.0"),
    ("--kd-weight", "-1", "kd_weight: expected a finite value >= 0, got -1.0"),
    ("--seed", "-1", "seed: expected an integer in [0, 2**32), got -1"),
    ("--lr", "nan", "lr: expected a finite value > 0, got nan"),
    ("--momentum", "1.5", "momentum: expected a finite value in [0, 1), got 1.5"),
])
def test_values_are_checked_before_any_work(checkpoint, tmp_path, capsys, flag, value, message):
    argv = ["train", "--model", "resnet20", "--teacher", str(checkpoint), "--epochs", "1", "--out", str(tmp_path)]
    assert cli.main(argv + [flag, value]) == 2
    assert message in one_error_line(capsys, "train")
    assert not (tmp_path / "config.yaml").exists()


def test_teacher_seed_is_checked(tmp_path, capsys):
    assert cli.main(["teacher", "--model", "resnet20", "--epochs", "1", "--seed", "-1", "--out", str(tmp_path)]) == 2
    assert "seed: expected an integer in [0, 2**32), got -1" in one_error_line(capsys, "teacher")


@pytest.mark.parametrize("argv, message", [
    (["siren", "reconstruct", "--model", "resnet20", "--checkpoint", "x", "--out", "o", "--data", "mnist"],
     "argument --data: invalid choice: 'mnist'"),
    (["train", "--model", "resnet20", "--epochs", "1", "--out", "o", "--no-kd", "--kd", "at0"],
     "argument --kd: not allowed with argument --no-kd"),
])
def test_argument_conflicts_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_siren_decouple_from_a_checkpoint_that_is_no_predictor(checkpoint, tmp_path, capsys):
    argv = ["siren", "decouple", "--model", "resnet20", "--checkpoint", str(checkpoint), "--from", str(checkpoint),
            "--teacher-checkpoint", str(checkpoint), "--epochs", "1", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    assert "--from: " in one_error_line(capsys, "siren")


def test_ctrl_c_says_how_to_continue(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("hyperkd.commands.teacher.run", interrupted)
    assert cli.main(["teacher", "--model", "resnet20", "--epochs", "1", "--out", "o"]) == 130
    assert capsys.readouterr().err == "hyperkd teacher: interrupted; continue with --resume\n"


def test_bench_out_may_be_a_folder_and_is_checked_before_the_run(tmp_path, capsys):
    assert bench.results_path(tmp_path, "relational") == tmp_path / "relational.jsonl"
    assert bench.results_path(tmp_path / "new" / "rows.jsonl", "relational") == tmp_path / "new" / "rows.jsonl"
    (tmp_path / "file").write_text("")
    assert cli.main(["bench", "--suite", "relational", "--out", str(tmp_path / "file" / "rows.jsonl")]) == 2
    assert "--out: cannot write" in one_error_line(capsys, "bench")


# -- --config files ------------------------------------------------------------------------------
def write_config(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_config_with_equals_sign_and_values_through_their_flags(tmp_path):
    path = write_config(tmp_path, "model: resnet20\nepochs: 2\nhidden: 16\nlr: '0.01'\nout: o\nmethods: [at0, ab]\n"
                                  "seeds: [0, 1]\nfused-step: true\n")
    args = cli.parse_args(["sweep", f"--config={path}"])
    assert (args.hidden, args.lr, args.methods, args.seeds, args.fused_step) == ((16,), 0.01, "at0,ab", (0, 1), True)
    args = cli.parse_args(["train", "--conf", str(write_config(tmp_path, "model: resnet20\nepochs: 1\nout: o\n"
                                                                         "hidden: [4, 8]\n"))])
    assert args.hidden == (4, 8)


@pytest.mark.parametrize("text, message", [
    ('no-kd: "false"', "key 'no-kd': expected true or false, got 'false'"),
    ("lr: [0.1, 0.2]", "key 'lr': invalid float value: '0.1,0.2'"),
    ("hidden: 0", "key 'hidden': expected positive widths"),
    ("optimizer: sgdd", "key 'optimizer': expected one of sgd, adam, adamw, got 'sgdd'"),
    ("epochs: {a: 1}", "key 'epochs': expected a value, got a mapping"),
    ("lr: [0.1", "not valid YAML"),
])
def test_config_values_that_their_flag_refuses_name_the_key(tmp_path, capsys, text, message):
    path = write_config(tmp_path, f"model: resnet20\nout: o\n{text}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["train", "--epochs", "1", "--config", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_saved_config_round_trips(tmp_path):
    from hyperkd.config import save_config

    args = cli.parse_args(["train", "--model", "resnet20", "--epochs", "1", "--out", str(tmp_path),
                           "--hidden", "4,8"])
    saved = yaml.safe_load(save_config(args, tmp_path).read_text())
    assert saved["hidden"] == [4, 8] and not list(tmp_path.glob(".*.tmp"))
    assert cli.parse_args(["train", "--config", str(tmp_path / "config.yaml")]).hidden == (4, 8)


# -- help ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, shown", [
    ("teacher", ["--batch-size BATCH_SIZE", "(default: 128)", "(default: cosine)"]),
    ("train", ["(default: 0.05)", "(default: 16,64,128)", "(default: digits)"]),
    ("eval", ["(default: digits)", "(default: 0.5)"]),
])
def test_help_shows_every_default(capsys, command, shown):
    with pytest.raises(SystemExit):
        cli.parse_args([command, "--help"])
    out = capsys.readouterr().out
    for text in shown:
        assert text in " ".join(out.split()) or text in out, text


def test_kd_list_needs_no_other_flag(capsys):
    assert cli.main(["train", "--kd", "list"]) == 0
    assert "at0" in capsys.readouterr().out


def test_top_level_help_builds_no_command():
    code = ("import sys\nfrom hyperkd import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('hyperkd.train') or m == 'hyperkd.data'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "train" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]"
