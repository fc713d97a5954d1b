# Shell functions shared by setup_env.sh, old_torch_env.sh and prove_cuda_compile.sh (source it, do not run it).
#
# The compiled part of mmcv (mmcv._ext) only works with the exact Python, torch build and CUDA flavour it was
# compiled for, and pip's wheel file name says only the first of the three. Everything here therefore works with a
# build key such as `cp312-torch2.14.1+cu130-cpu` (CPU-only ops) or `cp311-torch2.14.1+cu130-cu130` (CUDA ops).

MMCV_VERSION=2.1.0

log() { printf '[setup_env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Prints "<python tag> <torch version> <flavour> <torch.version.cuda or none> <needs C++20: 0/1>" for interpreter $1.
# The flavour is what mmcv's setup.py will build: CUDA ops when torch sees a GPU or FORCE_CUDA=1, CPU ops otherwise.
mmcv_build_facts() {
    "$1" - <<'PY'
import os, sys
import torch
from torch.utils.cpp_extension import include_paths
tag = f'cp{sys.version_info.major}{sys.version_info.minor}'
want_cuda = torch.cuda.is_available() or os.environ.get('FORCE_CUDA', '0') == '1'
if want_cuda and not torch.version.cuda:
    sys.exit(f'FORCE_CUDA=1 / a visible GPU, but torch {torch.__version__} is a CPU-only build: install a CUDA '
             'build of torch, or unset FORCE_CUDA')
flavour = 'cu' + torch.version.cuda.replace('.', '') if want_cuda else 'cpu'
# torch >= 2.10's headers refuse anything below C++20; mmcv 2.1.0 hard-codes -std=c++17 for g++ and nvcc.
aten = next((os.path.join(p, 'ATen', 'ATen.h') for p in include_paths()
             if os.path.exists(os.path.join(p, 'ATen', 'ATen.h'))), None)
cxx20 = int(aten is not None and 'C++20 or later' in open(aten).read())
print(tag, torch.__version__, flavour, torch.version.cuda or 'none', cxx20)
PY
}

# Prints the lock file (constraints) `make` installs with on Python version $1 ("3.10"), under root $2; stops the
# install, saying what to use instead, for a Python outside 3.10-3.13. constraints.txt was resolved on Python 3.11
# and also installs on 3.12 and 3.13 (where mmcv's compile is refused, see require_mmcv_buildable); on 3.10 several
# of its pins have no release (numpy 2.4, cuda-bindings 13.5.0 ...), so 3.10 has its own, constraints-py310.txt.
default_constraints() {
    local version=$1 root=$2
    case $version in
        3.10) echo "$root/requirements/constraints-py310.txt" ;;
        3.1[1-3]) echo "$root/requirements/constraints.txt" ;;
        *) die "Python $version is not supported: use Python 3.10, 3.11 or 3.12" \
            "(e.g. PYTHON=python3.12 make install)" ;;
    esac
}

# Stops the install, saying what to do instead, when mmcv cannot be compiled for Python tag $1 ($2: our wheel cache).
# mmcv 2.1.0's setup.py reads its version with exec() followed by locals()['__version__'], which Python 3.13 no
# longer fills in (PEP 667: locals() in a function is a snapshot), so its build stops at "KeyError: '__version__'"
# before compiling anything (seen with Python 3.13.0).
require_mmcv_buildable() {
    local tag=$1 cache=$2
    if [ "${tag#cp3}" -ge 13 ]; then
        log "mmcv $MMCV_VERSION cannot be compiled on Python 3.${tag#cp3}: its setup.py reads __version__ through"
        log "  locals() after exec(), which Python 3.13 changed (PEP 667); the build would stop at KeyError: '__version__'."
        log "  The OneDL fork stack builds there instead (onedl-mmcv 2.3.6 compiled on Python 3.13.0, 2026-12-02):"
        log "  PYTHON=python3.13 make fork-env (docs/install.md)."
        die "use Python 3.10, 3.11 or 3.12 (e.g. PYTHON=python3.12 make install), or put a working" \
            "mmcv-$MMCV_VERSION-$tag-$tag-*.whl into a PIP_FIND_LINKS folder or $cache"
    fi
}

# Writes compiler wrappers into directory $1 that raise mmcv's C++ standard to C++20 and exports CXX (and, for CUDA
# builds, PYTORCH_NVCC, which torch.utils.cpp_extension uses instead of $CUDA_HOME/bin/nvcc).
#   g++: a later -std wins, so appending -std=gnu++20 is enough.
#   nvcc: refuses a second -std ("redefinition of argument 'std'"), so the wrapper rewrites mmcv's -std=c++17
#   (MMCV_CUDA_ARGS cannot help: mmcv appends its own -std after it).
use_cxx20_wrappers() {
    local dir=$1 real_nvcc=${2:-}
    mkdir -p "$dir"
    printf '#!/bin/sh\nexec %s "$@" -std=gnu++20\n' "${CXX:-g++}" > "$dir/cxx"
    chmod +x "$dir/cxx"
    export CXX="$dir/cxx"
    if [ -n "$real_nvcc" ]; then
        cat > "$dir/nvcc" <<EOF
#!/bin/sh
for arg in "\$@"; do
    shift
    case \$arg in -std=c++1[147]) arg=-std=c++20 ;; esac
    set -- "\$@" "\$arg"
done
exec $real_nvcc "\$@"
EOF
        chmod +x "$dir/nvcc"
        export PYTORCH_NVCC="$dir/nvcc"
    fi
}

# Sets CUDA_HOME for a CUDA build of mmcv ($1: torch.version.cuda, e.g. 13.0). Takes $CUDA_HOME or the nvcc on
# PATH when it is of that release and has the library headers torch's CUDA headers include (cusparse.h, ...),
# unless MMDUALVIT_CUDA=pypi. Otherwise installs NVIDIA's nvcc, crt, nvvm (cicc) and cccl (thrust/cub) wheels of
# that release from PyPI into the venv ($vpy): they land in site-packages/nvidia/cu<major>/ next to the cudart,
# cublas, cusparse... wheels torch itself depends on, which together make a complete CUDA_HOME.
ensure_cuda_home() {
    local cuda=$1 nvcc release home
    if [ "${MMDUALVIT_CUDA:-}" != pypi ]; then
        for nvcc in ${CUDA_HOME:+$CUDA_HOME/bin/nvcc} $(command -v nvcc || true); do
            release=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
            # /usr/local/bin/nvcc may be a script that execs the real one: ask it for its own location instead.
            home=$(cd "$(dirname "$(readlink -f "$nvcc")")/.." && pwd)
            [ -x "$home/bin/nvcc" ] || home=${CUDA_HOME:-$home}
            if [ "$release" = "$cuda" ] && [ -f "$home/include/cusparse.h" ]; then
                export CUDA_HOME=$home
                log "using nvcc $release from $CUDA_HOME"
                return 0
            fi
            [ -n "$release" ] && log "not using $nvcc (CUDA $release, torch has CUDA $cuda; cusparse.h in $home:" \
                "$([ -f "$home/include/cusparse.h" ] && echo yes || echo no))"
        done
    fi
    local major=${cuda%%.*} site
    # CUDA 12 wheels spread over nvidia/<package>/ folders (and carry a -cu12 suffix); no single CUDA_HOME there.
    [ "$major" -ge 13 ] || die "no nvcc of CUDA $cuda found: install the CUDA $cuda toolkit and set CUDA_HOME" \
        "(the PyPI fallback needs CUDA >= 13's one-folder wheel layout)"
    site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    home="$site/nvidia/cu$major"
    if [ ! -x "$home/bin/nvcc" ]; then
        log "installing nvcc and the CUDA $cuda compiler headers from PyPI into $home"
        "$vpy" -m pip install -q "nvidia-cuda-nvcc==$cuda.*" "nvidia-cuda-crt==$cuda.*" "nvidia-nvvm==$cuda.*" \
            "nvidia-cuda-cccl==$cuda.*" "nvidia-cuda-runtime==$cuda.*"
    fi
    [ -f "$home/include/cusparse.h" ] || die "$home lacks cusparse.h: is torch a CUDA $cuda build with its nvidia-* wheels?"
    # torch links with -L$CUDA_HOME/lib64 -lcudart; the wheels ship lib/libcudart.so.<major> only.
    [ -e "$home/lib64" ] || ln -s lib "$home/lib64"
    [ -e "$home/lib/libcudart.so" ] || ln -s "libcudart.so.$major" "$home/lib/libcudart.so"
    export CUDA_HOME=$home
    log "using nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p') from $CUDA_HOME (PyPI)"
}

# Prepares the environment for compiling mmcv: wrappers when the torch headers need C++20, CUDA_HOME for CUDA
# builds. $1: scratch dir for the wrappers, then flavour, torch.version.cuda and cxx20 from mmcv_build_facts.
prepare_mmcv_compile_env() {
    local scratch=$1 flavour=$2 cuda=$3 cxx20=$4 real_nvcc=
    if [ "$flavour" != cpu ]; then
        ensure_cuda_home "$cuda"
        export FORCE_CUDA=1
        real_nvcc="$CUDA_HOME/bin/nvcc"
        # Without a GPU to ask, torch would build for every architecture it knows (hours); say so instead.
        [ -n "${TORCH_CUDA_ARCH_LIST:-}" ] || "$vpy" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null \
            || log "note: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building for all architectures (slow)"
    fi
    if [ "$cxx20" = 1 ]; then
        use_cxx20_wrappers "$scratch" "$real_nvcc"
    elif [ -n "$real_nvcc" ]; then
        unset PYTORCH_NVCC
    fi
    export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2}
}

# Compiles a wheel of mmcv (or a fork of it) against the installed torch, printing progress (ninja's [done/total])
# every 30 s; on failure, the last compiler error and the log's path. $1: the requirement ("mmcv==2.1.0",
# "onedl-mmcv==2.3.6"), $2: the build key (e.g. cp311-torch2.14.1+cu130-cpu), $3: the folder the finished wheel is
# moved to (only once complete, so an interrupted build never leaves a broken wheel there), $4: the folder for the
# build log. Uses $vpy and the flavour, torch.version.cuda and cxx20 of mmcv_build_facts (arguments 5-7).
compile_wheel() {
    local spec=$1 key=$2 dest=$3 logs=$4 flavour=$5 cuda=$6 cxx20=$7
    local name=${1%%[=<>!~ ]*} scratch log_file start pid status step elapsed errors
    scratch=$(mktemp -d)
    mkdir -p "$logs" "$dest"
    log_file="$logs/$name-${spec#"$name"}-$key-$(date -u +%Y%m%dT%H%M%SZ).log"
    log_file=${log_file//==/}
    # In a subshell: the compiler settings stay out of the caller's environment.
    (
        prepare_mmcv_compile_env "$scratch/bin" "$flavour" "$cuda" "$cxx20"
        log "compiling $spec for $key with MAX_JOBS=$MAX_JOBS (30-50 minutes on 2 cores for CPU ops; CUDA ops take"
        log "  longer); full log: $log_file"
        start=$(date +%s)
        # --no-build-isolation: the build must see the installed torch (in isolation the ops are silently left
        # out). --no-cache-dir / --no-binary: pip's wheel cache does not know which torch a wheel was built against.
        "$vpy" -m pip wheel -v --no-build-isolation --no-deps --no-cache-dir --no-binary "$name" -w "$scratch/wheels" \
            "$spec" > "$log_file" 2>&1 &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            sleep 30
            kill -0 "$pid" 2>/dev/null || break
            elapsed=$(( $(date +%s) - start ))
            # pip -v indents the build output; ninja's status is "[finished/total] command".
            step=$(grep -oE '^ *\[[0-9]+/[0-9]+\]' "$log_file" | tail -n 1 | tr -d ' []' || true)
            log "compiling $name: ${step:+step $step, }$((elapsed / 60))m$((elapsed % 60))s elapsed"
        done
        status=0; wait "$pid" || status=$?
        if [ "$status" != 0 ]; then
            log "$name compile FAILED (exit $status) after $(( ($(date +%s) - start) / 60 )) min. Last compiler error:"
            errors=$(grep -nE 'error:|#error|FAILED:|fatal' "$log_file" | tail -n 8 || true)
            printf '%s\n' "${errors:-$(tail -n 20 "$log_file")}" >&2
            rm -rf "$scratch"
            die "full log: $log_file"
        fi
        log "$name compiled in $(( ($(date +%s) - start) / 60 )) min ($log_file)"
    )
    mv "$scratch"/wheels/*.whl "$dest/"
    rm -rf "$scratch"
}
