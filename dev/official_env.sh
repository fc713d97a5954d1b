#!/usr/bin/env bash
# Build the environment the official Dual-ViT detection and segmentation code ran on (mmdet 2.x / mmseg 0.x), so that
# dev/official_outputs.py can produce the stored outputs of tests/data/official/. Not part of CI or `make test`.
#
#   bash dev/official_env.sh                 # venv .venv-official, the `python3` on PATH (3.11 tested)
#   VENV=/elsewhere/venv MAX_JOBS=8 bash dev/official_env.sh
#
# What it installs: torch 2.1.2 / torchvision 0.16.2 (numpy<2) from PyPI, mmcv-full 1.7.2 compiled from its source
# package with its CPU ops (10 min on a 2-core VM, 2026-12-07; no GPU needed, none used), mmdet 2.28.2,
# mmsegmentation 0.30.0 with mmcls 0.25.0 (dev/official_outputs.py imports the checkout's vendored mmseg 0.11.0
# instead, the code the paper's numbers come from), timm 0.6.13 (the official backbone files import
# timm.models.layers), pycocotools, and PyWavelets (the vendored mmseg imports its Wave-ViT backbone). Pins:
# setuptools<70 (mmcv-full's setup.py imports pkg_resources), yapf 0.32 (mmcv 1.x calls yapf's FormatCode with the
# `verify` argument that later versions removed), opencv<4.9 (later ones need numpy 2).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/install/lib.sh
. "$root/tools/install/lib.sh"
venv=${VENV:-$root/.venv-official}
python=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-2}

[ -x "$venv/bin/python" ] || { log "creating virtual environment $venv with $python"; "$python" -m venv "$venv"; }
vpy="$venv/bin/python"
pip() { "$vpy" -m pip "$@"; }

log "installing torch 2.1.2 and the build tools"
pip install -q torch==2.1.2 torchvision==0.16.2 'numpy<2' 'setuptools<70' wheel ninja
if ! "$vpy" -c 'import mmcv.ops' 2>/dev/null; then
    log "compiling mmcv-full 1.7.2 with its CPU ops (MAX_JOBS=$MAX_JOBS; about 10 min on 2 cores)"
    MMCV_WITH_OPS=1 FORCE_CUDA=0 pip install --no-build-isolation mmcv-full==1.7.2
fi
log "installing mmdet 2.28.2, mmsegmentation 0.30.0 and their dependencies"
pip install -q mmdet==2.28.2 mmsegmentation==0.30.0 mmcls==0.25.0 timm==0.6.13 yapf==0.32.0 pycocotools PyWavelets \
    'opencv-python<4.9' 'opencv-python-headless<4.9' 'numpy<2' matplotlib scipy terminaltables prettytable
"$vpy" -c 'import mmcv, mmcv.ops, mmdet, mmseg, torch; print("torch", torch.__version__, "mmcv", mmcv.__version__,
"mmdet", mmdet.__version__, "mmseg", mmseg.__version__)'
pip freeze > "$venv/pip-freeze.txt"
log "installed $venv (versions: $venv/pip-freeze.txt)"
