#!/usr/bin/env bash
# Multi-process training with torchrun: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# GPU nodes: one process per GPU (NCCL). CPU-only machines: gloo processes (tools/train.py sets them up through
# mmdualvit.engine.launch.distributed_session).
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT on each node.
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" --nproc_per_node="$NPROC" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
