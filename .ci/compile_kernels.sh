#!/usr/bin/env bash
# Compile every kernels/*.hip for AMD (clang-19 HIP, device only, gfx1100 = RDNA3 wave32 and
# gfx942 = CDNA3 wave64) and for NVIDIA (nvcc, sm_90). Fails on any compile error.
# A missing clang-19 is installed with apt-get when running as root; a compiler that cannot be
# had is skipped with a message (nvcc is not installable from Debian's archive).
# attention.hip is also built for its extreme shapes (-DATT_G/NEK/NEV) the backend may ask for.
set -u
cd "$(dirname "$0")/.."
fail=0
ran=0

have() { command -v "$1" >/dev/null 2>&1; }

if ! have clang++-19 || [ ! -f /usr/include/hip/hip_runtime.h ]; then
    if [ "$(id -u)" = 0 ] && have apt-get; then
        echo "installing clang-19, libamdhip64-dev, rocm-device-libs ..."
        apt-get update -qq && apt-get install -y -qq clang-19 libamdhip64-dev rocm-device-libs >/dev/null \
            || echo "apt-get install failed"
    fi
fi

variants() {   # extra -D sets per file
    case "$1" in
        attention.hip) echo "-DATT_G=1,-DATT_NEK=2,-DATT_NEV=2 -DATT_G=8,-DATT_NEK=8,-DATT_NEV=8 -DATT_G=7,-DATT_NEK=3,-DATT_NEV=3 -DATT_G=4,-DATT_KV=1 -DATT_G=2,-DATT_NEK=1,-DATT_KV=2" ;;   # f16, FP8 E4M3FN, E4M3FNUZ caches
        paged_attention.hip) echo ", -DATT_NEK=1,-DATT_NEV=1 -DATT_NEK=8,-DATT_NEV=8 -DATT_KV=1 -DATT_NEK=2,-DATT_NEV=1,-DATT_KV=2" ;;   # f16, FP8 E4M3FN, E4M3FNUZ pools
        ssm.hip) echo ", -DSSM_NPAD=128 -DSSM_NPAD=1024" ;;   # shuffle sum (<= warp), shared-memory tree (> warp)
        mmq_frag.hip) echo "-DRF_FRAG_BN=16 -DRF_FRAG_BN=32 -DRF_FRAG_BN=64 -DRF_FRAG_BN=64,-DRF_MMQ_NO_MMA=1" ;;   # the host's column tiles
        gated_delta.hip) echo ", -DGDN_KS=1,-DGDN_R=1 -DGDN_KS=16,-DGDN_R=16" ;;   # small dk, dk = 256
        *) echo "," ;;
    esac
}

compile() {  # label, command...
    local label=$1; shift
    if ! out=$("$@" 2>&1); then
        echo "FAIL  $label"; echo "$out" | head -30; fail=1
    else
        echo "ok    $label"
    fi
}

if have clang++-19 && [ -f /usr/include/hip/hip_runtime.h ]; then
    for arch in gfx1100 gfx942; do
        for f in kernels/*.hip; do
            for v in $(variants "$(basename "$f")"); do
                defs=${v//,/ }
                [ "$arch" = gfx942 ] && [[ "$defs" == *ATT_NEK=8* ]] && defs="-DATT_G=8 -DATT_NEK=4 -DATT_NEV=4"
                # shellcheck disable=SC2086
                compile "clang-19 $arch $f $defs" clang++-19 -x hip --offload-arch=$arch --cuda-device-only -S \
                    -nogpulib --rocm-path=/usr -Werror=implicit-function-declaration $defs -o /dev/null "$f"
                ran=1
            done
        done
    done
else
    echo "SKIP  clang-19 HIP builds: clang-19 / HIP headers (libamdhip64-dev) not available and not installable here"
fi

if have nvcc; then
    for f in kernels/*.hip; do
        for v in $(variants "$(basename "$f")"); do
            defs=${v//,/ }
            # shellcheck disable=SC2086
            compile "nvcc sm_90 $f $defs" nvcc -arch=sm_90 -c -x cu $defs -o /dev/null "$f"
            ran=1
        done
    done
else
    echo "SKIP  nvcc builds: nvcc not found (install the CUDA toolkit to check the CUDA path)"
fi

[ $ran = 1 ] || { echo "no compiler ran"; exit 1; }
[ $fail = 0 ] && echo "all kernels compiled" || echo "kernel compile errors"
exit $fail
