#!/usr/bin/env bash
# The GPU experiments behind the closing notes of issues 3 and 4, as one self-limiting script:
#   1. resnet18 on PneumoniaMNIST (28x28), then AT / ANT / noise / none fine-tunes of it (eps 2/255 and 8/255),
#      each evaluated white-box (FGSM, BIM, MI-FGSM, PGD with restarts) on the whole test split;
#   2. the thesis's full-size models, ResNet-50 and DenseNet-121 at 224x224 on the Kermany chest X-rays,
#      their white-box robustness, the transfer matrix, and HSJA/GBBA on a few images.
# Steps run in priority order and are skipped when the time left (BUDGET_S) is too short; results (JSON, Markdown,
# PNG; no weights) are packed into $OUT/results.tar.gz after every step, so a killed run still returns them.
# Usage: OUT=/tmp/gpu DATA=../shared/data bash bench/gpu_run.sh      (DEV=cpu plus the small settings to try it)
set -u
PY=${PY:-python3}
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-/tmp/medshield_gpu_runs}
OUT=${OUT:-/tmp/medshield_gpu_out}
DEV=${DEV:-cuda}
R18=${R18:-resnet18}                         # the 28x28 model of issue 4
FULL=${FULL:-"resnet50 densenet121"}         # the thesis's full-size models
EP_R18=${EP_R18:-8}; EP_DEF=${EP_DEF:-3}; EP_FULL=${EP_FULL:-5}
EVAL_N_FULL=${EVAL_N_FULL:-300}; BB_N=${BB_N:-5}; BB_BUDGETS=${BB_BUDGETS:-500,1000,2000}
BUDGET_S=${BUDGET_S:-520}
source "$(dirname "$0")/gpu_steps.sh"   # DEADLINE, pack, step, ms; the environment check
step r18_train 30 150 $(ms train --dataset pneumoniamnist --data-dir "$DATA" --model "$R18" --epochs "$EP_R18" --device "$DEV" --out "$RUNS/pn_r18")
defend() {  # defend NAME DEFENSE EPS
  step "$1" 30 120 $(ms defend --dataset pneumoniamnist --data-dir "$DATA" --model "$R18" --defense "$2" --train-attack mifgsm \
       --train-steps 5 --train-eps "$3" --init-from "$RUNS/pn_r18" --epochs "$EP_DEF" --eval-eps 2/255,8/255 \
       --device "$DEV" --out "$RUNS/$1")
}
defend r18_none none 2/255; defend r18_at at 2/255; defend r18_ant ant 2/255
for m in $FULL; do
  step "cx_$m" 60 150 $(ms train --dataset chest_xray --data-dir "$DATA" --model "$m" --epochs "$EP_FULL" --device "$DEV" --out "$RUNS/cx_$m")
done
full_runs=$(for m in $FULL; do printf '%s,' "$RUNS/cx_$m"; done); full_runs=${full_runs%,}
step cx_whitebox 40 150 $(ms attack --run "$full_runs" --data-dir "$DATA" --attack fgsm,bim,pgd,mifgsm --eps 2/255,8/255 --n "$EVAL_N_FULL" \
     --batch-size 50 --device "$DEV" --out "$RUNS/cx_whitebox")
[[ $FULL == *" "* ]] && step cx_transfer 20 60 $(ms transfer --source "$full_runs" --data-dir "$DATA" --attack mifgsm --eps 2/255 --n "$EVAL_N_FULL" \
     --batch-size 50 --device "$DEV" --out "$RUNS/cx_transfer")
defend r18_noise noise 2/255; defend r18_at8 at 8/255; defend r18_ant8 ant 8/255
first=${FULL%% *}
step cx_blackbox 60 200 $(ms blackbox --run "$RUNS/cx_$first" --data-dir "$DATA" --attack hsja,gbba --budgets "$BB_BUDGETS" --n-images "$BB_N" \
     --device "$DEV" --out "$RUNS/cx_blackbox")
step report 10 60 $(ms defense-report --runs "$RUNS/r18_none,$RUNS/r18_at,$RUNS/r18_ant,$RUNS/r18_noise,$RUNS/r18_at8,$RUNS/r18_ant8" --out "$RUNS/r18_report")
pack; ls -la "$OUT"
