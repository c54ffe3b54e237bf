#!/bin/bash
# Pretraining throughput, old code (before the refactor) and new code alternated: A B A B A B, same data,
# same block, same budget; median tokens/s over each run's log windows (the first window left out).
cd /tmp
PY=/work/main/.venv/bin/python
rm -rf /tmp/ba-runs; mkdir -p /tmp/ba-runs
for i in 1 2 3; do
  for side in before after; do
    if [ $side = before ]; then src=/tmp/before; else src=/work/main; fi
    PYTHONPATH=$src CRAMMING_SIMPLE_AUTOREGISTER=0 $PY -m cramming_simple -q pretrain --block sasp --budget smoke \
      --runs-dir /tmp/ba-runs --name $side-$i hours=0.008 impl.log_seconds=2 impl.eval_minutes=0 \
      data.cache_dir=/tmp/ba-cache impl.device=cpu train.microbatch=32 > /dev/null 2>&1
    $PY - <<PYEOF
import json, statistics
rows = [json.loads(l) for l in open("/tmp/ba-runs/$side-$i/metrics.jsonl") if '"tokens_per_s"' in l]
rates = [r["tokens_per_s"] for r in rows][1:]
s = json.load(open("/tmp/ba-runs/$side-$i/summary.json"))
print(f"$side run $i: median tokens/s {statistics.median(rates):,.0f} over {len(rates)} windows; "
      f"{s['microbatch_steps']} microbatch steps in {s['elapsed_s']:.1f} s")
PYEOF
  done
done
