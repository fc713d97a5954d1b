#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install mmdualvit with its pinned OpenMMLab stack.
#
#   bash tools/install/setup_env.sh            # venv at ./.venv
#   VENV=/path/to/venv bash tools/install/setup_env.sh
#
# mmcv 2.1.0 exists on PyPI only as a source tarball. Its wheel is looked up, in order, in $PIP_FIND_LINKS and in
# our own cache (.cache/wheels/torch-<version>/); if none is found it is compiled once (30-50 min on 2 cores) into
# that cache, keyed by the torch version because the compiled ops only work with the torch they were built against.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${VENV:-$root/.venv}
python=${PYTHON:-python3}
torch_version=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' "$root/requirements/torch.txt")
wheel_cache=${MMDUALVIT_WHEEL_CACHE:-$root/.cache/wheels}/torch-$torch_version

log() { printf '[setup_env] %s\n' "$*" >&2; }

[ -x "$venv/bin/python" ] || { log "creating virtual environment $venv"; "$python" -m venv "$venv"; }
vpy="$venv/bin/python"
pip() { "$vpy" -m pip "$@"; }

mkdir -p "$wheel_cache"
# Keep any find-links pip is configured with (e.g. local torch wheels) and add our cache.
configured_links=$(pip config get global.find-links 2>/dev/null || true)
export PIP_FIND_LINKS="$wheel_cache ${PIP_FIND_LINKS:-} $configured_links"
constraints="$root/requirements/constraints.txt"

log "installing build tools and torch $torch_version"
pip install -q -c "$constraints" -r "$root/requirements/build.txt" -r "$root/requirements/torch.txt"

find_mmcv_wheel() {
    local dir
    for dir in $PIP_FIND_LINKS; do
        ls "$dir"/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl 2>/dev/null && return 0
    done
    return 1
}

if ! "$vpy" -c 'import mmcv, mmcv.ops' 2>/dev/null; then
    if ! wheel=$(find_mmcv_wheel); then
        log "no prebuilt mmcv 2.1.0 wheel found: compiling it against torch $torch_version (30-50 minutes)"
        # torch >= 2.10 headers need C++20 but mmcv's setup.py forces -std=c++17; a later flag wins.
        cxx=$(mktemp -d)/cxx
        printf '#!/bin/sh\nexec g++ "$@" -std=gnu++20\n' > "$cxx"
        chmod +x "$cxx"
        tmp_wheels=$(mktemp -d)
        CXX="$cxx" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
            pip wheel --no-build-isolation --no-deps --no-cache-dir --no-binary mmcv -w "$tmp_wheels" mmcv==2.1.0
        # Move into the cache only once complete, so an interrupted build never leaves a broken wheel there.
        mv "$tmp_wheels"/mmcv-2.1.0-*.whl "$wheel_cache/"
        wheel=$(find_mmcv_wheel)
    fi
    log "installing $wheel"
    pip install -q --no-deps "$wheel"
fi

log "installing the OpenMMLab stack and mmdualvit"
pip install -q -c "$constraints" -r "$root/requirements.txt"
pip install -q --no-deps --no-build-isolation -e "$root"

"$vpy" - <<'PY'
import torch
from mmcv.ops import nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
_, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
import mmdet, mmseg, mmpretrain, mmengine, mmcv  # noqa: F401  (their version asserts run here)
print(f'[setup_env] ok: torch {torch.__version__}, mmcv {mmcv.__version__} (ops work), mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}')
PY
