#!/usr/bin/env bash
# The batch kernels' loop on the GPU machine (device tool), from the repository root; carry: .whl
#   bash benchmarks/gpu_mmq_session.sh [ROWS] [MMQ_BENCH ARGS...]
# Checks kernels/mmq_frag.hip and mmq.hip against their references (tests/gpu/test_mmq_gpu.py), times
# the 7B Q4_0 shapes at ROWS (default 16,32,64) with benchmarks/mmq_bench.py, then profiles the
# o projection at 16 rows with Nsight Compute (speed of light, occupancy, warp stalls) where ncu is
# installed. Logs in $OUT: pytest.log, mmq.log, ncu.log.
set -uo pipefail
# shellcheck source=benchmarks/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
rows=${1:-16,32,64}
shift || true
rc=0
python3 -m pytest tests/gpu/test_mmq_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -3 || rc=1
python3 benchmarks/mmq_bench.py --formats Q4_0 --rows "$rows" --per-sm 2 "$@" 2>&1 | tee "$OUT/mmq.log" \
    | grep -E "mmq/|staged|frag-" || rc=1
if command -v ncu >/dev/null 2>&1; then
    ncu --clock-control none --kernel-name regex:mmq_frag_q4_0t --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python3 benchmarks/mmq_bench.py --formats Q4_0 --shapes o --rows 16 --per-sm 2 --reps 2 \
        > "$OUT/ncu.log" 2>&1 || rc=1
    grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued" \
        "$OUT/ncu.log" | head -12
fi
exit $rc
