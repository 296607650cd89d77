# Sourced by the GPU-machine scripts (gpu_zoo.sh, gpu_session.sh): the wheels the machine lacks
# (.whl, carried), PYTHONPATH, the log folder $OUT, the card's name in $OUT/gpu.txt.
OUT="${OUT:-gpu-logs}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
