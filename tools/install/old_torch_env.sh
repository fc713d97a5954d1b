#!/usr/bin/env bash
# Create (or reuse) a second environment with an older torch from PyPI, as in a typical existing mmdet 3.3 /
# mmseg 1.2 setup, with mmcv 2.1.0 built for that torch and mmdualvit installed editable.
#
#   bash tools/install/old_torch_env.sh 2.1.2         # venv .venv-torch2.1.2, torchvision 0.16.2, numpy<2
#   bash tools/install/old_torch_env.sh 2.0.1 0.15.2  # torchvision given explicitly
#   make old-torch-env TORCH=2.1.2                    # the same; `make test-old-torch` then runs the quick tier
#
# CI runs the quick tier in the torch 2.1.2 environment (.ci/run). Settings as for setup_env.sh (PYTHON, MAX_JOBS,
# PIP_FIND_LINKS: a folder with an mmcv wheel built for this torch saves the compile); VENV defaults to
# .venv-torch<version>. For torch 2.1.2 on Python 3.11 every package is pinned by
# requirements/constraints-torch2.1.2.txt (resolved once by this script, then frozen); for another version only the
# OpenMMLab packages keep their pins from requirements/constraints.txt and pip resolves the rest against the old
# torch and numpy<2 (the newest pins there are built for numpy 2 / torch 2.14).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
torch_version=${1:?usage: old_torch_env.sh TORCH_VERSION [TORCHVISION_VERSION]}
case $torch_version in
    2.0.*) default_tv=0.15.2 ;; 2.1.*) default_tv=0.16.2 ;; 2.2.*) default_tv=0.17.2 ;;
    2.3.*) default_tv=0.18.1 ;; 2.4.*) default_tv=0.19.1 ;; 2.5.*) default_tv=0.20.1 ;;
    *) default_tv= ;;
esac
torchvision_version=${2:-$default_tv}
[ -n "$torchvision_version" ] || { echo "give the torchvision version matching torch $torch_version" >&2; exit 2; }
export VENV=${VENV:-$root/.venv-torch$torch_version}

# A first install needs room for torch's CUDA build from PyPI: 5.5 GB installed (torch 2.1.2) plus its downloads
# (2.6 GB, in pip's cache or a temporary folder). pip's own "No space left on device" names neither.
need_gb=${OLD_TORCH_FREE_GB:-9}
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    mkdir -p "$(dirname "$VENV")"
    free_gb=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "[old_torch_env] only $free_gb GB free under $(dirname "$VENV"); installing torch $torch_version with its" \
            "CUDA libraries needs about $need_gb GB. Free some (make clean-venv, pip cache purge) or set VENV to a" \
            "larger disk (OLD_TORCH_FREE_GB changes the figure checked)." >&2
        exit 1
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# torch < 2.3 was built against numpy 1.x; numpy 2 breaks its tensor <-> array conversions.
printf 'torch==%s\ntorchvision==%s\nnumpy<2\n' "$torch_version" "$torchvision_version" > "$work/torch.txt"
lock="$root/requirements/constraints-torch$torch_version.txt"
python=${PYTHON:-python3}
if [ -f "$lock" ] && [ "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = 3.11 ]; then
    constraints=$lock
else
    { grep -E '^(mmengine|mmcv|mmdet|mmsegmentation|mmpretrain|setuptools|wheel|ninja)==' \
        "$root/requirements/constraints.txt"; echo 'numpy<2'; } > "$work/constraints.txt"
    constraints=$work/constraints.txt
fi
TORCH_REQUIREMENTS="$work/torch.txt" CONSTRAINTS="$constraints" bash "$root/tools/install/setup_env.sh"
"$VENV/bin/python" -m pip freeze --exclude-editable > "$VENV/pip-freeze.txt"
echo "[old_torch_env] installed $VENV (versions: $VENV/pip-freeze.txt)" >&2
