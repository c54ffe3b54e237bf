cd /tmp
PY=/work/main/.venv/bin/python
for i in 1 2; do for side in before after; do
  if [ $side = before ]; then src=/tmp/before; else src=/work/main; fi
  PYTHONPATH=$src CRAMMING_SIMPLE_AUTOREGISTER=0 $PY -m cramming_simple -q bench --arch tiny --batch 32 --steps 30 --warmup 3 \
    --blocks sasp --device cpu --json --out /tmp/bench-$side-$i > /dev/null 2>&1
  $PY -c "
import json; r = json.load(open('/tmp/bench-$side-$i/bench.json'))
rows = {x['name']: x for x in r['rows']}
p = rows['sasp'].get('paired_ratio')
print('$side $i: preln step %.1f ms, sasp step %.1f ms, sasp/preln tokens/s %.3f' % (1e3*rows['preln']['step_s_median'], 1e3*rows['sasp']['step_s_median'], rows['sasp']['ratio_vs_preln'])
      + ('' if p is None else ', paired %.3f [%.3f, %.3f]' % (p, rows['sasp']['paired_low'], rows['sasp']['paired_high'])))
"
done; done
