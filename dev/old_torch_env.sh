#!/usr/bin/env bash
# Build a second environment with an older torch from PyPI (as in a typical existing mmdet 3.3 / mmseg 1.2 setup),
# compile mmcv 2.1.0 against it, install mmdualvit and run the whole test suite there.
#
#   bash dev/old_torch_env.sh 2.1.2         # venv .venv-torch2.1.2, torchvision 0.16.2, numpy<2
#   bash dev/old_torch_env.sh 2.0.1 0.15.2  # torchvision given explicitly
#   (make old-torch-env TORCH=2.1.2 does the same)
#
# Settings as for setup_env.sh (PYTHON, MAX_JOBS, ...); VENV defaults to .venv-torch<version>. Only the OpenMMLab
# packages keep their exact pins from requirements/constraints.txt; everything else is resolved by pip against the
# old torch and numpy<2 (the newest pins there are built for numpy 2 / torch 2.14).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
torch_version=${1:?usage: old_torch_env.sh TORCH_VERSION [TORCHVISION_VERSION]}
case $torch_version in
    2.0.*) default_tv=0.15.2 ;; 2.1.*) default_tv=0.16.2 ;; 2.2.*) default_tv=0.17.2 ;;
    2.3.*) default_tv=0.18.1 ;; 2.4.*) default_tv=0.19.1 ;; 2.5.*) default_tv=0.20.1 ;;
    *) default_tv= ;;
esac
torchvision_version=${2:-$default_tv}
[ -n "$torchvision_version" ] || { echo "give the torchvision version matching torch $torch_version" >&2; exit 2; }
export VENV=${VENV:-$root/.venv-torch$torch_version}

work=$(mktemp -d)
# torch < 2.3 was built against numpy 1.x; numpy 2 breaks its tensor <-> array conversions.
printf 'torch==%s\ntorchvision==%s\nnumpy<2\n' "$torch_version" "$torchvision_version" > "$work/torch.txt"
{ grep -E '^(mmengine|mmcv|mmdet|mmsegmentation|mmpretrain|setuptools|wheel|ninja)==' \
    "$root/requirements/constraints.txt"; echo 'numpy<2'; } > "$work/constraints.txt"
TORCH_REQUIREMENTS="$work/torch.txt" CONSTRAINTS="$work/constraints.txt" bash "$root/tools/install/setup_env.sh"
rm -rf "$work"

cd "$root"
"$VENV/bin/python" -m pip freeze --exclude-editable > "$VENV/pip-freeze.txt"
echo "[old_torch_env] installed ($VENV/pip-freeze.txt); running the test suite" >&2
"$VENV/bin/python" -m pytest tests
