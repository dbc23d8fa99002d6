"""``hyperkd gtn-eval``: the KD stage of the GTN comparison. Each student is distilled from scratch
from each teacher (vanilla / SFTN / GTN checkpoints of one architecture) with each KD method over
the seeds, through :func:`hyperkd.train.student.train_student` (plain student, CE weight 1).

Runs go to ``OUT/runs/<student>/<teacher>/<kd>/seed<k>``; a finished run (``summary.json``) is
read back, an interrupted one resumed, so the command is resumable as a whole. ``OUT/runs.csv``
has one row per run, ``OUT/table.md`` the test accuracy (mean ± std over seeds) per student ×
teacher × KD method with the mean over the pool's random students, and ``OUT/gtn_eval.png`` a bar
plot of it. ``random:N`` adds N distinct random paths of the supernet (``--preset``), named in
``OUT/students.json``.
"""
import json
from pathlib import Path

HELP = "distil students from vanilla/SFTN/GTN teachers with each KD method over seeds; table and plot"
KD_SPECS = {"logit": "logit:T=4", "dkd": "dkd"}


def add_arguments(parser):
    parser.add_argument("--teachers", required=True,
                        help="method=CKPT pairs, e.g. vanilla=v/best.pt,sftn=s/best.pt,gtn=g/best.pt")
    parser.add_argument("--teacher-model", required=True, help="the teachers' architecture (a zoo name)")
    parser.add_argument("--students", required=True,
                        help="zoo names and random:N, e.g. s_nas_s_small,s_nas_m_small,random:4")
    parser.add_argument("--kd", default="logit,dkd",
                        help="KD methods: logit (T=4), dkd (alpha=1, beta=8, T=4) or any registry spec")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of each student run")
    parser.add_argument("--epochs", type=int, required=True, help="epochs of each student run")
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")
    parser.add_argument("--data", default="digits", help="digits (bundled), cifar10 or cifar100")
    parser.add_argument("--data-root", default=None, help="folder with the CIFAR files ($HYPERKD_DATA)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate (cosine schedule)")
    parser.add_argument("--preset", default="small", help="supernet preset of the random:N students")
    parser.add_argument("--pool-seed", type=int, default=0, help="seed of the random:N students' paths")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def parse_teachers(text: str) -> dict:
    """``"vanilla=a.pt,gtn=b.pt"`` → {"vanilla": Path("a.pt"), "gtn": Path("b.pt")}, files checked."""
    teachers = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        method, eq, path = item.partition("=")
        if not eq or not method or not path:
            raise ValueError(f"--teachers: expected method=CKPT pairs, got {item!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--teachers: no checkpoint at {path} (for {method})")
        teachers[method.strip()] = Path(path)
    if not teachers:
        raise ValueError("--teachers: expected at least one method=CKPT pair")
    return teachers


def parse_students(text: str, preset: str, seed: int) -> dict:
    """Student label → model name; ``random:N`` → random1..N."""
    from hyperkd import models
    from hyperkd.gtn.supernet import sample_students

    students = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item.startswith("random:"):
            count = item.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"--students: random:N needs a positive N, got {item!r}")
            names = sample_students(int(count), preset=preset, seed=seed)
            students.update({f"random{i + 1}": name for i, name in enumerate(names)})
        else:
            models.create(item, num_classes=10)  # raises, naming the close matches
            students[item] = item
    if not students:
        raise ValueError("--students: expected at least one student")
    return students


def _ints(text: str, flag: str) -> list:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def run_one(args, student: str, teacher_ckpt: Path, kd: str, seed: int, out: Path) -> dict:
    """One KD run (resumed if interrupted, read back if finished): its summary."""
    from hyperkd.train.student import StudentConfig, train_student

    summary = out / "summary.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if done.get("epochs") == args.epochs:
            return done
    cfg = StudentConfig(model=student, teacher_model=args.teacher_model, teacher=teacher_ckpt, hyper="none",
                        kd=[KD_SPECS.get(kd, kd)], lambda0=1.0, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, lr_schedule="cosine", data=args.data, data_root=args.data_root, seed=seed,
                        workers=args.workers, device=args.device)
    train_student(cfg, out, resume=(out / "last.pt").exists(), progress=False)
    return json.loads(summary.read_text())


def run(args) -> int:
    from hyperkd.gtn.report import write_report

    teachers = parse_teachers(args.teachers)
    students = parse_students(args.students, args.preset, args.pool_seed)
    kds = [k.strip() for k in args.kd.split(",") if k.strip()]
    seeds = _ints(args.seeds, "--seeds")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "students.json").write_text(json.dumps(students, indent=2) + "\n")
    rows = []
    for label, model in students.items():
        for method, ckpt in teachers.items():
            for kd in kds:
                for seed in seeds:
                    out = args.out / "runs" / label / method / kd / f"seed{seed}"
                    summary = run_one(args, model, ckpt, kd, seed, out)
                    rows.append({"student": label, "model": model, "teacher": method, "kd": kd, "seed": seed,
                                 "test_acc": summary["test_acc"], "val_acc": summary["val_acc"],
                                 "mean_epoch_time_s": summary["mean_epoch_time_s"]})
                    print(f"{label} <- {method} [{kd}] seed {seed}: test {summary['test_acc']:.4f}", flush=True)
    write_report(rows, args.out)
    print((args.out / "table.md").read_text())
    return 0
