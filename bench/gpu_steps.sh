# Shared by the self-limiting device scripts (bench/gpu_run.sh, bench/gpu_perf.sh); source it after setting
# PY, RUNS, OUT and BUDGET_S. Defines DEADLINE, pack, step and ms, and runs the environment check.
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-520} ))
export MEDSHIELD_NO_PROGRESS=1 PYTHONUNBUFFERED=1 GIT_PYTHON_REFRESH=quiet
mkdir -p "$RUNS/logs" "$OUT"

# pack: every result so far (no weights) into $OUT/results.tar.gz, so a killed run still returns them.
pack() { tar czf "$OUT/results.tar.gz" --exclude='*.safetensors' -C "$RUNS" . ; }

# step NAME MIN_SECONDS CAP_SECONDS COMMAND...: run COMMAND under the smaller of CAP and the time left.
step() {
  local name=$1 need=$2 cap=$3; shift 3
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < need )); then echo "SKIP $name (${left}s left, needs ${need}s)"; return 0; fi
  (( cap > left )) && cap=$left
  local t0=$(date +%s)
  timeout "$cap" "$@" > "$RUNS/logs/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc $(( $(date +%s) - t0 ))s"; tail -n "${TAIL_LINES:-4}" "$RUNS/logs/$name.log"
  pack
}
ms() { echo "$PY -m medshield.cli $*"; }

step env 1 60 $PY -c "import torch, monai; print(torch.__version__, monai.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi -L 2>/dev/null
