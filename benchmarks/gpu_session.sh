#!/usr/bin/env bash
# One batched GPU session (device tool) from the repository root, carry: .whl
#   bash benchmarks/gpu_session.sh "TEST ARGS" "AB ARGS"
# installs the wheels, runs pytest with TEST ARGS (skipped if empty), writes the 7B Q4_0 side-by-side
# file to /tmp/sbs, then runs benchmarks/gpu_ab.py on it with AB ARGS (skipped if empty). Logs in $OUT.
set -uo pipefail
# shellcheck source=benchmarks/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
rc=0
if [ -n "${1:-}" ]; then
    # shellcheck disable=SC2086
    python3 -m pytest $1 -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -8 || rc=1
fi
if [ -n "${2:-}" ]; then
    (cd benchmarks && python3 -c "import side_by_side as s; s.write_model('7b-q4_0', s.Path('/tmp/sbs/7b-q4_0.gguf'))") \
        > "$OUT/make.log" 2>&1 || { tail "$OUT/make.log"; exit 1; }
    # shellcheck disable=SC2086
    python3 benchmarks/gpu_ab.py /tmp/sbs/7b-q4_0.gguf $2 --json "$OUT/ab.json" > "$OUT/ab.log" 2>&1 || rc=1
    grep -E "^[a-z0-9+_-]+ +\{" "$OUT/ab.log"; tail -3 "$OUT/ab.log"
fi
exit $rc
