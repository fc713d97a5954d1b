#!/usr/bin/env bash
# Prove, on any Linux machine (no GPU needed), that the installer's CUDA build of mmcv compiles against the torch
# of a venv: same environment as setup_env.sh sets up for FORCE_CUDA=1 (nvcc of torch.version.cuda's release from
# PyPI, the C++20 nvcc/g++ wrappers), same mmcv setup.py, same build.ninja written by torch's BuildExtension; then
# only the chosen sources are compiled from that build.ninja, not all ~200 (hours on 2 cores).
#
#   bash dev/prove_cuda_compile.sh  # .venv, nms_cuda.cu + roi_align_cuda.cu + nms.cpp
#   VENV=/path/to/venv bash dev/prove_cuda_compile.sh pytorch/cuda/nms_cuda.cu
#
# Sources are paths under mmcv/ops/csrc/. TORCH_CUDA_ARCH_LIST defaults to 9.0 (H100/H200). Like setup_env.sh, it
# pip-installs nvidia-cuda-nvcc/-crt/-cccl and nvidia-nvvm of torch's CUDA release into the venv (once); mmcv's
# source goes to a temporary folder. MMDUALVIT_CUDA defaults to `pypi` here (ignore any system nvcc); set it empty
# to let a matching system CUDA toolkit be used as setup_env.sh would. WITHOUT_CXX20=1 leaves the C++20 wrappers
# out (control: with torch >= 2.10 the compile must then fail on ATen's "C++20 or later" #error).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/install/lib.sh
. "$root/tools/install/lib.sh"
venv=${VENV:-$root/.venv}
vpy="$venv/bin/python"
export MMDUALVIT_CUDA=${MMDUALVIT_CUDA-pypi}
[ $# -gt 0 ] || set -- pytorch/cuda/nms_cuda.cu pytorch/cuda/roi_align_cuda.cu pytorch/nms.cpp
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

facts=$(mmcv_build_facts "$vpy") || die "cannot determine what to build mmcv for (above)"
read -r py_tag torch_version flavour torch_cuda cxx20 <<< "$facts"
[ "${WITHOUT_CXX20:-0}" = 1 ] && cxx20=0
log "build key: $py_tag-torch$torch_version-$flavour (C++20 wrappers: $cxx20)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prepare_mmcv_compile_env "$work/bin" "$flavour" "$torch_cuda" "$cxx20"

"$vpy" -m pip download -q --no-deps --no-binary mmcv --no-cache-dir -d "$work" "mmcv==$MMCV_VERSION"
tar xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
src="$work/mmcv-$MMCV_VERSION"

# Run mmcv's own setup.py build_ext up to the point where torch has written build.ninja, then stop before ninja.
(cd "$src" && "$vpy" - <<'PY')
import runpy
import sys

import torch.utils.cpp_extension as cpp_extension


class NinjaFileWritten(Exception):
    pass


def stop(build_directory, verbose, error_prefix):
    raise NinjaFileWritten(build_directory)


cpp_extension._run_ninja_build = stop
sys.argv = ['setup.py', 'build_ext']
try:
    runpy.run_path('setup.py', run_name='__main__')
except NinjaFileWritten as done:
    open('../build_dir', 'w').write(str(done))
else:
    sys.exit('setup.py finished without writing a build.ninja')
PY
build_dir=$(cat "$work/build_dir")

ninja=$([ -x "$venv/bin/ninja" ] && echo "$venv/bin/ninja" || echo ninja)
status=0
for source in "$@"; do
    obj=$(grep -E "^build [^:]*: (cuda_)?compile [^ ]*/mmcv/ops/csrc/$source\$" "$build_dir/build.ninja" \
        | sed -E 's/^build ([^:]*):.*/\1/' | sed 's/\$:/:/g') || die "no build step for $source in build.ninja"
    log "compile command for $source (from torch's build.ninja):"
    (cd "$build_dir" && "$ninja" -t commands "$obj" | tail -n 1) >&2
    start=$(date +%s)
    if (cd "$build_dir" && "$ninja" "$obj" > "$work/ninja.log" 2>&1); then
        log "OK: $source -> $(basename "$obj") ($(stat -c %s "$obj") bytes, $(( $(date +%s) - start )) s)"
    else
        grep -E 'error|FAILED' "$work/ninja.log" | head -n 10 >&2
        log "FAILED: $source"
        status=1
    fi
done
exit $status
