#!/usr/bin/env bash
# The GPU proof, run on the lent GPU machine from the repository root (device tool):
#   carry: .whl (gguf + threadpoolctl wheels), .models (SmolLM2 truncated by rocmforge.testing.truncate)
# Logs go to $OUT (or ./gpu-logs).
set -uo pipefail
OUT="${OUT:-gpu-logs}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
export ROCMFORGE_SMOLLM2_GGUF="${ROCMFORGE_SMOLLM2_GGUF:-.models/smollm2-10l.gguf}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
rc=0
python3 -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log" || rc=1
python3 -m pytest tests/test_phi3_plugin.py -k gpu -q -p no:cacheprovider 2>&1 | tee -a "$OUT/pytest_gpu.log" || rc=1
for dev in numpy gpu; do     # the float reference next to the GPU
    python3 -m rocmforge.cli.main run "$ROCMFORGE_SMOLLM2_GGUF" -p "The capital of France is" -n 24 \
        --temperature 0 --device "$dev" > "$OUT/run_$dev.txt" || rc=1
done
if cmp -s "$OUT/run_numpy.txt" "$OUT/run_gpu.txt"; then echo "greedy text: GPU == CPU (NumPy)"; else echo "greedy text differs"; rc=1; fi
cat "$OUT/run_gpu.txt"
python3 -m rocmforge.cli.main bench "$ROCMFORGE_SMOLLM2_GGUF" --device gpu --prompt 128 --gen 32 --repeat 3 --json \
    > "$OUT/bench_gpu.json" || rc=1
# decode t/s, eager launches vs the captured decode graph (same process, same card)
python3 benchmarks/gpu_decode_bench.py "$ROCMFORGE_SMOLLM2_GGUF" --prompt 16 --gen 128 --repeat 3 2>&1 \
    | tee "$OUT/decode_graph.log" || rc=1
exit $rc
