#!/usr/bin/env bash
# The zoo on the GPU machine (device tool), from the repository root:
#   here first:  python benchmarks/gpu_conformance.py --build .gpu-models
#                python -m tests.gpu.test_gpt_oss_mxfp4_gpu .gpu-models/gpt_oss_mxfp4
#   carry:       .whl (gguf, threadpoolctl, tqdm wheels), .gpu-models
# Runs the GPU op tests and the conformance GPU == CPU check of every architecture; logs in $OUT.
set -uo pipefail
# shellcheck source=benchmarks/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
rc=0
export ROCMFORGE_GPT_OSS_MXFP4="${ROCMFORGE_GPT_OSS_MXFP4:-$(ls -d .gpu-models/gpt_oss_mxfp4/*/mxfp4 2>/dev/null | head -1)}"
python3 -c "import transformers" 2>/dev/null && echo "transformers: yes" || echo "transformers: no"
python3 -m pytest tests/gpu/test_ops.py tests/gpu/test_graph.py tests/gpu/test_gpt_oss_mxfp4_gpu.py -m gpu -q -rs \
    -p no:cacheprovider 2>&1 \
    | tee "$OUT/pytest_gpu_ops.log" | tail -15 || rc=1
python3 benchmarks/gpu_conformance.py --workdir .gpu-models --json "$OUT/gpu_conformance.json" 2>&1 \
    | tee "$OUT/gpu_conformance.log" | tail -80 || rc=1
exit $rc
