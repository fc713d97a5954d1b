#!/usr/bin/env bash
# Build a second environment with the OneDL forks of OpenMMLab from PyPI (onedl-mmengine, onedl-mmcv compiled from
# its source package, onedl-mmdetection, onedl-mmsegmentation, onedl-mmpretrain) and run the whole test suite there.
#
#   make fork-env                                   # venv .venv-onedl, the `python3` on PATH, torch 2.10.0
#   PYTHON=python3.12 TORCH=2.10.0 TORCHVISION=0.25.0 ONEDL_MMCV=2.3.6 bash dev/fork_env.sh
#   DRY_RUN=1 bash dev/fork_env.sh                  # resolve only (pip --dry-run): nothing compiled or installed
#
# Other settings as for tools/install/setup_env.sh: VENV, MAX_JOBS (2), MMDUALVIT_WHEEL_CACHE (.cache/wheels; the
# onedl-mmcv wheel is kept under a key naming Python, torch and CUDA flavour, as mmcv's is). The versions of the forks
# are the newest in requirements/mminstall-onedl.txt's ranges; torch and torchvision are pinned so that nothing
# replaces the torch onedl-mmcv is compiled against. Not part of CI.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/install/lib.sh
. "$root/tools/install/lib.sh"
venv=${VENV:-$root/.venv-onedl}
python=${PYTHON:-python3}
torch_version=${TORCH:-2.10.0}
torchvision_version=${TORCHVISION:-0.25.0}
onedl_mmcv=${ONEDL_MMCV:-2.3.6}
cache_root=${MMDUALVIT_WHEEL_CACHE:-$root/.cache/wheels}

[ -x "$venv/bin/python" ] || { log "creating virtual environment $venv with $python"; "$python" -m venv "$venv"; }
vpy="$venv/bin/python"
pip() { "$vpy" -m pip "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# setuptools<82 as for mmcv: the forks' setup.py files run under --no-build-isolation with the venv's setuptools.
printf 'torch==%s\ntorchvision==%s\nonedl-mmcv==%s\nsetuptools<82\n' "$torch_version" "$torchvision_version" \
    "$onedl_mmcv" > "$work/constraints.txt"
stack=(-r "$root/requirements/mminstall-onedl.txt" -r "$root/requirements/runtime.txt"
       -r "$root/requirements/tests.txt")

if [ -n "${DRY_RUN:-}" ]; then
    log "resolving torch $torch_version and the fork stack (dry run: pip prepares the source packages' metadata only)"
    pip install --dry-run -c "$work/constraints.txt" -r "$root/requirements/build.txt" torch torchvision "${stack[@]}"
    exit 0
fi

log "installing build tools and torch $torch_version / torchvision $torchvision_version"
pip install -q -c "$work/constraints.txt" -r "$root/requirements/build.txt" torch torchvision

facts=$(mmcv_build_facts "$vpy") || die "cannot determine what to build onedl-mmcv for (above)"
read -r py_tag torch_installed flavour torch_cuda cxx20 <<< "$facts"
key="$py_tag-torch$torch_installed-$flavour"
wheel_cache="$cache_root/onedl-mmcv-$onedl_mmcv/$key"
ops_ok() { "$vpy" "$root/tools/install/check_env.py" --ops-only --flavour "$flavour"; }
if ops_ok 2>/dev/null; then
    log "onedl-mmcv already installed and working"
else
    if ! ls "$wheel_cache"/onedl_mmcv-"$onedl_mmcv"-*.whl > /dev/null 2>&1; then
        compile_wheel "onedl-mmcv==$onedl_mmcv" "$key" "$wheel_cache" "$cache_root/logs" "$flavour" "$torch_cuda" \
            "$cxx20"
    fi
    pip install -q --no-build-isolation -c "$work/constraints.txt" "$wheel_cache"/onedl_mmcv-"$onedl_mmcv"-*.whl
    ops_ok || die "the onedl-mmcv wheel in $wheel_cache does not work here (above); delete it to rebuild"
fi

log "installing the fork stack and mmdualvit"
pip install -q --no-build-isolation -c "$work/constraints.txt" "${stack[@]}"
pip install -q --no-deps --no-build-isolation -e "$root"
"$vpy" "$root/tools/install/check_env.py" --flavour "$flavour"
pip freeze --exclude-editable > "$venv/pip-freeze.txt"

cd "$root"
log "installed ($venv/pip-freeze.txt); running the test suite"
"$vpy" -m pytest tests
