#!/usr/bin/env bash
# Last command on the GPU machine (README.md). Results go straight into $OUT (at most 8 files come back).
set -u
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
BUDGET=${BUDGET:-400}   # seconds after which no new run starts
HARD=${HARD:-480}       # seconds after which every job is stopped (finished runs are already written)
python3 scripts/gpu/receive.py ${RECEIVE_DIR:-.gpucarry_d} || exit 1
for i in $(seq 1 120); do [ -e /tmp/w/smollm2.done ] || [ -e /tmp/w/smollm2.failed ] && break; sleep 1; done
[ -e /tmp/w/smollm2.done ] || { echo "smollm2 conversion did not finish"; tail -c 2000 /tmp/w/smollm2.log; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
PIDS=()
if [ -e /tmp/w/smollm2.done ]; then
  timeout $HARD python3 benchmarks/epi_quality.py --profile quality --model-path /tmp/w/smollm2 \
    --data-root /tmp/w/datasets --device cuda --jobs ${EPI_JOBS:-8} --summary-ratios-only \
    --time-budget $BUDGET --out-dir "$OUT" --work-dir /tmp/w/epi_lm ${EPI_ARGS:-} > "$OUT/epi_lm.log" 2>&1 &
  PIDS+=($!)
fi
[ "${FAST_JOBS:-2}" -gt 0 ] && timeout $HARD python3 benchmarks/epi_quality.py --profile fast --model-path /tmp/w/minilm-l6 \
  --data-root /tmp/w/datasets --device cuda --jobs ${FAST_JOBS:-2} --steps-per-task 96 --seeds 0,1,2,3,4 \
  --summary-ratios-only --report-name epi_quality_fast_long --time-budget $BUDGET --out-dir "$OUT" \
  --work-dir /tmp/w/epi_fast > "$OUT/epi_fast.log" 2>&1 &
[ "${FAST_JOBS:-2}" -gt 0 ] && PIDS+=($!)
if [ -n "${PARSER_COMMAND:-}" ]; then
  timeout $HARD bash -c "$PARSER_COMMAND" > /tmp/w/parser.log 2>&1 &
  PIDS+=($!)
fi
( for i in $(seq 1 $((HARD / 60))); do sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) >> "$OUT/epi_fast.log" 2>&1 &
wait "${PIDS[@]}"
[ -e /tmp/w/parser.log ] && { echo "== parser stdout/stderr (tail)"; tail -n 40 /tmp/w/parser.log; } >> "$OUT/epi_fast.log"
ls -la "$OUT"
