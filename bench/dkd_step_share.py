"""DKD's share of a KD step on this machine: teacher forward, student forward+backward, and the DKD
(and logit KD) loss forward+backward on the logits, as medians. It decides whether DKD needs a
fused op (docs/gtn.md).

    python bench/dkd_step_share.py [--batch 64] [--classes 100] [--teacher resnet20] [--student s_nas_s_small]
"""
import argparse
import statistics
import time

import torch

from hyperkd import models
from hyperkd.kd import make_method


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="s_nas_s_small")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = models.create(args.teacher, num_classes=args.classes).eval()
    student = models.create(args.student, num_classes=args.classes)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, args.classes, (args.batch,))
    with torch.no_grad():
        z_t = teacher(x)
    z_s = student(x).detach().requires_grad_()

    def teacher_forward():
        with torch.no_grad():
            teacher(x)

    def student_step():
        student.zero_grad()
        student(x).sum().backward()

    def loss_step(method):
        def run():
            total, _ = method.weighted([z_s], [z_t], None)
            total.backward()
        return run

    dkd = make_method("dkd")
    dkd.bind_batch(y)
    t_teacher, t_student = median_ms(teacher_forward, 5), median_ms(student_step, 5)
    t_dkd, t_logit = median_ms(loss_step(dkd), 50), median_ms(loss_step(make_method("logit")), 50)
    step = t_teacher + t_student + t_dkd
    print(f"B={args.batch} K={args.classes} threads={torch.get_num_threads()}: teacher forward {t_teacher:.1f} ms, "
          f"student forward+backward {t_student:.1f} ms, DKD forward+backward {t_dkd:.3f} ms "
          f"({100 * t_dkd / step:.2f} % of the step), logit KD {t_logit:.3f} ms")


if __name__ == "__main__":
    main()
