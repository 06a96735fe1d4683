#!/usr/bin/env bash
# Issue 20's GPU figures as one self-limiting script (the CPU figures are in docs/performance.md):
#   1. bench_pgd at 224 px, ResNet-50: ours vs the raw forward+backward floor, foolbox and ART;
#   2. bench_hsja at 28 px (a SmallCNN trained here, seconds on a GPU) and at 128 px (ResNet-18): queries/s vs
#      foolbox and ART, median L2 per budget;
#   3. bench_ray_shards: one black-box job sharded by image, 1 vs 2 Ray workers sharing the GPU (gpus_per_job 0.5);
#   4. thesis scale: HSJA / GBBA / OPT at 20K queries per image on a ResNet-50 trained at 224 px on the Kermany chest
#      X-rays, with its wall time (BB_N images; the 50-image wall time is BB_N's scaled, and says so);
#   5. bench_apgd at 224 px, ResNet-50: APGD-CE vs its floor, torchattacks and ART (if time is left).
# Steps run in priority order and are skipped when the time left (BUDGET_S) is too short; every step's JSON and
# log are packed into $OUT/results.tar.gz after each step, so a killed run still returns what it finished.
# Usage: bash bench/gpu_carry.sh here (fills .whl/ and .gpu_data/), then one device run with carry [".whl", ".gpu_data"]:
#   pip install -q --no-index --no-deps .whl/*.whl && OUT=$OUT DATA=.gpu_data bash bench/gpu_perf.sh   (timeout_s 600)
# Try it here first:       DEV=cpu SMALL=1 OUT=/tmp/gp DATA=../shared/data bash bench/gpu_perf.sh
set -u
PY=${PY:-python3}
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-/tmp/medshield_gpu_perf}
OUT=${OUT:-/tmp/medshield_gpu_perf_out}
DEV=${DEV:-cuda}
SMALL=${SMALL:-0}          # 1: tiny settings that finish on a CPU in minutes (to check the script, not to measure)
if (( SMALL )); then
  PGD="--model smallcnn --size 28 --channels 1 --batch 16 --steps 3 --repeats 1"; H28="--n-images 4 --budgets 200,500"
  H128="--model resnet18 --size 128 --n-images 2 --budgets 50,100"; EP=1; BB_N=${BB_N:-2}; BB_BUDGETS=${BB_BUDGETS:-200,500}
  RAY="--n-images 4 --shard-size 1 --budgets 200"; CX="--model smallcnn --size 64"
else
  PGD="--model resnet50 --size 224 --channels 3 --batch 64 --steps 10 --repeats 3"; H28="--n-images 16 --budgets 1000,2000,5000"
  H128="--model resnet18 --size 128 --n-images 16 --budgets 500,1000,2000"; EP=3; BB_N=${BB_N:-5}
  BB_BUDGETS=${BB_BUDGETS:-1000,5000,10000,20000}; RAY="--n-images 16 --shard-size 2 --budgets 1000,2000,5000"
  CX="--model resnet50 --size 224"
fi
BUDGET_S=${BUDGET_S:-540}
TAIL_LINES=6
source "$(dirname "$0")/gpu_steps.sh"   # DEADLINE, pack, step, ms; the environment check
step pgd224 30 150 $PY bench/bench_pgd.py $PGD --device "$DEV" --json "$RUNS/pgd224.json"
step train28 20 120 $(ms train --dataset pneumoniamnist --data-dir "$DATA" --model smallcnn --epochs "$EP" --device "$DEV" --out "$RUNS/pn_small")
step hsja28 30 150 $PY bench/bench_hsja.py --run "$RUNS/pn_small" --data-dir "$DATA" $H28 --device "$DEV" --json "$RUNS/hsja28.json"
step hsja128 30 150 $PY bench/bench_hsja.py $H128 --data-dir "$DATA" --device "$DEV" --json "$RUNS/hsja128.json"
if $PY -c "import ray" 2>/dev/null; then
  step ray 40 150 $PY bench/bench_ray_shards.py --run "$RUNS/pn_small" --data-dir "$DATA" $RAY --per-image --workers 2 \
       --device "$DEV" --gpus-per-job "$([[ $DEV == cuda* ]] && echo 0.5 || echo 0)" --out "$RUNS/ray_out" --json "$RUNS/ray.json"
else
  echo "SKIP ray (not installed: its 79 MB wheel does not fit what a device run carries)"
fi
step train_cx 60 180 $(ms train --dataset chest_xray --data-dir "$DATA" $CX --epochs "$EP" --device "$DEV" --out "$RUNS/cx")
step thesis_bb 60 300 /usr/bin/time -v $(ms blackbox --run "$RUNS/cx" --data-dir "$DATA" --attacks hsja,gbba,opt \
     --budgets "$BB_BUDGETS" --n-images "$BB_N" --device "$DEV" --out "$RUNS/thesis_bb")
step apgd224 30 120 $PY bench/bench_apgd.py $PGD --device "$DEV" --json "$RUNS/apgd224.json"
pack; ls -la "$OUT"
