#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install mmdualvit with its pinned OpenMMLab stack.
#
#   bash tools/install/setup_env.sh                                   # venv at ./.venv, the `python3` on PATH
#   PYTHON=python3.12 VENV=/path/to/venv bash tools/install/setup_env.sh
#   FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 bash tools/install/setup_env.sh   # CUDA ops without a visible GPU
#
# Other settings: TORCH_REQUIREMENTS (default requirements/torch.txt) and CONSTRAINTS (default
# requirements/constraints.txt, or requirements/constraints-py310.txt on Python 3.10) choose the torch and the pins
# (old_torch_env.sh uses them), MAX_JOBS (2) the compile parallelism, MMDUALVIT_WHEEL_CACHE (.cache/wheels) where
# compiled mmcv wheels are kept.
#
# mmcv 2.1.0 exists on PyPI only as a source tarball. Its compiled ops only work with the Python, torch build and
# CUDA flavour they were built for, so wheels are cached under a key naming all three (see lib.sh), e.g.
# .cache/wheels/mmcv-2.1.0/cp312-torch2.14.1+cu130-cpu/. A wheel is taken from that cache, or else from pip's
# find-links folders if it matches the interpreter's tag AND passes check_env.py (its ops load with this torch and
# are of the needed flavour: a CPU-only wheel is refused on a GPU machine); otherwise mmcv is compiled once
# (30-50 min on 2 cores) into the cache, with progress printed every 30 s.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tools/install/lib.sh
. "$root/tools/install/lib.sh"
venv=${VENV:-$root/.venv}
python=${PYTHON:-python3}
torch_reqs=${TORCH_REQUIREMENTS:-$root/requirements/torch.txt}
cache_root=${MMDUALVIT_WHEEL_CACHE:-$root/.cache/wheels}

[ -x "$venv/bin/python" ] || { log "creating virtual environment $venv with $python"; "$python" -m venv "$venv"; }
vpy="$venv/bin/python"
pip() { "$vpy" -m pip "$@"; }
py_version=$("$vpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
default=$(default_constraints "$py_version" "$root")
constraints=${CONSTRAINTS:-$default}
log "pinned versions: $constraints"

# Keep any find-links pip is configured with (e.g. local torch wheels); our cache is searched separately.
configured_links=$(pip config get global.find-links 2>/dev/null || true)
find_links="${PIP_FIND_LINKS:-} $configured_links"

log "installing build tools and torch ($(grep -v '^#' "$torch_reqs" | tr '\n' ' '))"
pip install -q -c "$constraints" -r "$root/requirements/build.txt" -r "$torch_reqs"

facts=$(mmcv_build_facts "$vpy") || die "cannot determine what to build mmcv for (above)"
read -r py_tag torch_version flavour torch_cuda cxx20 <<< "$facts"
key="$py_tag-torch$torch_version-$flavour"
wheel_cache="$cache_root/mmcv-$MMCV_VERSION/$key"
mkdir -p "$wheel_cache"
log "mmcv build key: $key"

ops_ok() { "$vpy" "$root/tools/install/check_env.py" --ops-only --flavour "$flavour"; }

# Installs the first wheel (of those given) whose ops work here; prints it. Others are uninstalled again.
try_wheels() {
    local wheel
    for wheel in "$@"; do
        [ -f "$wheel" ] || continue
        log "trying $wheel"
        pip install -q --no-deps --force-reinstall "$wheel" >&2
        pip install -q -c "$constraints" "$wheel" >&2  # mmcv's own dependencies (cv2, mmengine, ...), pinned
        if ops_ok >&2; then echo "$wheel"; return 0; fi
        log "refused $wheel (see the reason above)"
        pip uninstall -q -y mmcv >&2
    done
    return 1
}

if ops_ok 2>/dev/null; then
    log "mmcv $MMCV_VERSION already installed and working"
else
    pattern="mmcv-$MMCV_VERSION-$py_tag-$py_tag-*.whl"
    # shellcheck disable=SC2086  # find_links is a space-separated list of folders
    if ! wheel=$(try_wheels "$wheel_cache"/$pattern $(for d in $find_links; do echo "${d#file://}"/$pattern; done)); then
        require_mmcv_buildable "$py_tag" "$wheel_cache"
        compile_wheel "mmcv==$MMCV_VERSION" "$key" "$wheel_cache" "$cache_root/logs" "$flavour" "$torch_cuda" "$cxx20"
        wheel=$(try_wheels "$wheel_cache"/$pattern) || die "the mmcv wheel just built does not work here (above)"
    fi
    log "installed $wheel"
fi

log "installing the OpenMMLab stack and mmdualvit"
# requirements.txt without its torch line: $torch_reqs chose the torch (old_torch_env.sh installs another one).
pip install -q -c "$constraints" -r "$torch_reqs" -r "$root/requirements/mminstall.txt" \
    -r "$root/requirements/runtime.txt" -r "$root/requirements/tests.txt"
pip install -q --no-deps --no-build-isolation -e "$root"
"$vpy" "$root/tools/install/check_env.py" --flavour "$flavour"
