#!/usr/bin/env bash
# The serving benchmark side by side on the GPU machine (device tool), from the repository root;
# carry: .whl (gguf + the serve stack's wheels) and .llama-src (benchmarks/side_by_side.py --trim).
#   bash benchmarks/gpu_serve_session.sh "PYTEST ARGS"
# Builds llama.cpp's llama-server (CUDA/HIP) in the background while PYTEST ARGS run (skipped if
# empty), writes the random-weight 7B Q4_0 file both engines serve, then runs benchmarks/serve_bench.py
# at 1, 4, 16 and 64 streams and the shared-system-prompt workload. Logs and JSON in $OUT.
set -uo pipefail
# shellcheck source=benchmarks/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
rc=0
python3 benchmarks/side_by_side.py --build-only --targets llama-server -j "$(( $(nproc) - 2 ))" \
    > "$OUT/build.log" 2>&1 &
build=$!
(cd benchmarks && python3 -c "import side_by_side as s; s.write_model('7b-q4_0', s.Path('/tmp/sbs/7b-q4_0.gguf'))") \
    > /tmp/make.log 2>&1 || { tail /tmp/make.log; exit 1; }
if [ -n "${1:-}" ]; then
    # shellcheck disable=SC2086
    python3 -m pytest $1 -q -p no:cacheprovider -rfE 2>&1 | tee "$OUT/pytest.log" \
        | grep -E "passed|failed|FAILED|ERROR" | grep -v excepthook || rc=1
fi
# where a serving step's time goes (no HTTP): engine steps at 1 / 16 / 64 sequences, launch by launch
python3 benchmarks/engine_profile.py /tmp/sbs/7b-q4_0.gguf --device gpu --streams 1,16,64 --top 20 \
    > "$OUT/engine_profile.log" 2>&1 || rc=1
grep -E "^session|^engine x" "$OUT/engine_profile.log"
# a serve-like wave: prompts of ~200 tokens all at once (prefill chunks beside the running decodes)
python3 benchmarks/engine_profile.py /tmp/sbs/7b-q4_0.gguf --device gpu --streams 16,64 --prompt 200 --gen 32 \
    --top 0 --kernels '' > "$OUT/engine_wave.log" 2>&1 || rc=1
grep -E "^engine x|wave x" "$OUT/engine_wave.log"
wait $build || { tail -20 "$OUT/build.log"; exit 1; }
server=/tmp/llama-build/bin/llama-server
python3 benchmarks/serve_bench.py --ours /tmp/sbs/7b-q4_0.gguf --device gpu --llama-server $server --ngl 99 \
    --streams 1,4,16,64 --tokens 128 --logdir /tmp --json "$OUT/serve.json" --step-trace "$OUT/steps.jsonl" 2>&1 \
    | tee "$OUT/serve.log" | tail -16 || rc=1
python3 benchmarks/serve_bench.py --ours /tmp/sbs/7b-q4_0.gguf --device gpu --llama-server $server --ngl 99 \
    --streams 16 --tokens 32 --shared-prefix 400 --logdir /tmp --json "$OUT/serve-prefix.json" 2>&1 \
    | tee -a "$OUT/serve.log" | tail -5 || rc=1
tail -n 40 /tmp/rocmforge-server.log /tmp/llama.cpp-server.log > "$OUT/servers.log" 2>&1
exit $rc
