#!/usr/bin/env bash
# ../shared/GPU.md's checklist as one call of the device tool (one H100/H200, 15 device minutes per session in
# all, so one call of at most ~9 minutes). Items run in order of value; each gets what is left of LIMIT seconds
# (minus a reserve), and an item that no longer fits is skipped and said so. Every item's output is packed into
# $OUT/results.tar.gz after it ends, so a call killed at its limit still brings back what finished.
#
#   run: bash reports/bench/gpu-checklist.sh        (carry .whl and .gpu; see below)
#   .whl: omegaconf, datasets, dill, multiprocess, platformdirs wheels for the device's python3.12
#   .gpu/cache: builtin data prepared here (`data --budget 1h hours=0.006 data.source=builtin
#               data.cache_dir=.gpu/cache`); .gpu/glue: the tests' TSV GLUE fixture (tests/test_demo.glue_fixture)
# DRY=1 runs the same sequence on this CPU at toy sizes (to check the script, not to measure anything).
set -u
START=$(date +%s)
LIMIT=${LIMIT:-540}
OUT=${OUT:-/tmp/gpu-out}
W=${W:-/tmp/gpu-work}
mkdir -p "$OUT" "$W/logs"
PY=${PY:-python3}
CS="$PY -m cramming_simple"
HOURS=0.006  # 21.6 s of training per pretraining run

if [ "${DRY:-0}" = 1 ]; then
  CAL="train.microbatch=2 impl.compile=false impl.calibration_seconds=2"
  BENCH="--arch tiny --batch 4 --steps 2 --warmup 1"
  PRE="impl.device=cpu arch.preset=tiny train.microbatch=4 impl.compile=false"
  HOURS=0.002
else
  CAL="impl.calibration_seconds=40"
  BENCH="--arch crammed-bert --max-minutes 1"
  PRE=""
fi
PRE="$PRE hours=$HOURS data.source=builtin data.cache_dir=.gpu/cache impl.checkpoint_minutes=0.1 impl.log_seconds=4"

left() { echo $((LIMIT - ($(date +%s) - START))); }
say() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$OUT/log.txt"; }
pack() {
  (cd "$W" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.yaml' -o -name '*.log' \
    -o -name '*.txt' -o -name '*.csv' \) -size -20M | tar czf "$OUT/results.tar.gz" -T -)
}

# item NAME CAP COMMAND...: run COMMAND (a function below) for at most CAP s and what is left minus 15 s
item() {
  local name=$1 cap=$2 l t s rc
  shift 2
  l=$(left)
  t=$((cap < l - 15 ? cap : l - 15))
  if ((t < 30)); then
    say "== $name: skipped ($l s left)"
    return
  fi
  say "== $name: up to $t s"
  s=$(date +%s)
  timeout -k 10 "$t" bash -c "$*" >"$W/logs/$name.log" 2>&1
  rc=$?
  say "== $name: rc $rc after $(($(date +%s) - s)) s"
  tail -n 4 "$W/logs/$name.log" | sed 's/^/   /' | tee -a "$OUT/log.txt"
  pack
}

calibrate() {  # BUDGET
  $CS calibrate --budget "$1" --json $CAL >"$W/calibrate-$1.json"
}

# a crammed-bert pretraining of $1 through the real loop; with "kill": SIGTERM once training has logged, then --resume
pretrain() {
  local block=$1 mode=${2:-} pid rc
  if [ "$mode" = kill ]; then
    $CS pretrain --block "$block" --budget 1h --runs-dir "$W/runs" --name "$block-gpu" $PRE &
    pid=$!
    for _ in $(seq 1 240); do
      [ "$(cat "$W/runs/$block-gpu/metrics.jsonl" 2>/dev/null | wc -l)" -ge 2 ] && break
      sleep 1
    done
    echo "SIGTERM at $(date +%T), metrics lines: $(wc -l <"$W/runs/$block-gpu/metrics.jsonl")"
    kill -TERM "$pid"
    wait "$pid"
    rc=$?
    echo "exit code after SIGTERM: $rc (4 = preempted, checkpoint written)"
    ls -la "$W/runs/$block-gpu"
    $CS pretrain --block "$block" --budget 1h --runs-dir "$W/runs" --name "$block-gpu" --resume
  else
    $CS pretrain --block "$block" --budget 1h --runs-dir "$W/runs" --name "$block-gpu" $PRE
  fi
}

export -f calibrate pretrain
export CS CAL PRE W

say "device checklist, limit $LIMIT s"
{
  nvidia-smi || true
  $PY -c "import sys, torch, transformers; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__); \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  nproc
  git log -1 --format='%H %s' 2>/dev/null || true
} >"$W/env.txt" 2>&1
cat "$W/env.txt" | tee -a "$OUT/log.txt"

# 2026-12-04 (reports/bench/2026-12-04-h200.md): both calibrations ran (71 s and 31 s) and are in hardware.yaml; the
# compiled bench of 4 blocks and the HF peer did not finish within 210 s (compiling 4 fresh models and the peer),
# so it now comes first, with more time, and the calibrations only with CALIBRATE=1.
if [ "${CALIBRATE:-0}" = 1 ]; then
  item calibrate-24h 110 calibrate 24h
  item calibrate-24h-published 100 calibrate 24h-published
fi
# 1: the side-by-side bench, compiled, bf16, batch 128, with the Hugging Face peer
item bench-compiled 300 "$CS bench $BENCH --peer hf --compile --blocks preln,parallel,sas,sasp --out $W/bench-compiled"
# 2: the real loop: sasp preempted by SIGTERM and resumed, then preln through to its budget
item pretrain-sasp 130 pretrain sasp kill
item pretrain-preln 90 pretrain preln
# 3: GLUE on the GPU
item glue 70 "$CS glue $W/runs/preln-gpu --protocol smoke --data-dir .gpu/glue --tasks sst2,rte,stsb,cola"
# what time is left: the eager bench of all seven blocks, a profile of a compiled SAS-P step
item bench-eager 90 "$CS bench $BENCH --peer hf --no-compile --blocks all --out $W/bench-eager"
item profile 80 "$CS bench $BENCH --compile --blocks sasp --profile --out $W/bench-profile"
say "done, $(left) s left"
pack
