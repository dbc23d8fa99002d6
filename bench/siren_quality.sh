#!/bin/sh
# The SIREN quality tables on digits (docs/siren.md, "Quality on digits"): every run goes through
# bench/siren_chunked.sh (10-minute locked chunks, exact --resume). Runs land in runs/ (ignored);
# bench/siren_quality_summary.py then appends them as rows to bench/results/siren_quality.jsonl.
#   PYTHONPATH=. bench/siren_quality.sh            (from the repository root)
set -eu
RUN=bench/siren_chunked.sh
T=runs/teacher/best.pt
COMMON="--model resnet20 --checkpoint $T --encoding siren --batch-size 16"
# The original net.
[ -f runs/teacher/summary.json ] || $RUN teacher --model resnet20 --data digits --epochs 10 --batch-size 64 --lr 0.05 --out runs/teacher
# Table 1: reconstruction only, width 320 (CR 1.156), 50 epochs x 79 steps.
$RUN siren reconstruct $COMMON --width 320 --lr 3e-4 --epochs 50 --out runs/recon320
$RUN siren analyse $COMMON --width 320 --from runs/recon320/best.pt --out runs/recon320/analysis
# Table 3: progressive rounds of the Table 1 predictor (round 1 is Table 1's command again).
$RUN siren progressive $COMMON --width 320 --lr 3e-4 --epochs 50 --rounds 3 --out runs/prog320
# Table 2: width 210 (CR 0.502). Phase 1 (12 epochs), phase 2 = logit KD only (4 epochs, Adam lr
# 2e-6: 1e-4 killed the decoded net in one step), on images or on U[-1,1] noise; the joint baseline
# and a recon-only run take the same 12 + 4 = 16 epochs from scratch.
$RUN siren reconstruct $COMMON --width 210 --lr 3e-4 --epochs 12 --out runs/recon210
$RUN siren decouple $COMMON --width 210 --from runs/recon210/best.pt --teacher-checkpoint $T --epochs 4 --lr 2e-6 --out runs/decoupled210
$RUN siren decouple $COMMON --width 210 --from runs/recon210/best.pt --teacher-checkpoint $T --epochs 4 --lr 2e-6 --noise --out runs/decoupled210-noise
$RUN siren reconstruct $COMMON --width 210 --lr 3e-4 --epochs 16 --kd-weight 1e-4 --fmd-weight 1e-4 --out runs/joint210
$RUN siren reconstruct $COMMON --width 210 --lr 3e-4 --epochs 16 --out runs/recon210-16
