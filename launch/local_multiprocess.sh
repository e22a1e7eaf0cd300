#!/usr/bin/env bash
# Train with N processes on this machine (CPU, gloo collectives): each process gets one host device and feeds its
# 1/N of the global batch; they meet through jax.distributed on a free localhost port.
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.key=value ...]
# e.g. launch/local_multiprocess.sh 2 configs/tiny_joint.py /tmp/tiny2 --config.mesh.data=2 --config.mesh.fsdp=1
set -euo pipefail
N=${1:?number of processes}; CONFIG=${2:?config file}; WORKDIR=${3:?workdir}; shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu LAV2_COORDINATOR="localhost:$PORT" LAV2_NUM_PROCESSES="$N" LAV2_PROCESS_ID="$i" \
    "$PY" -m lav2_jax.cli.main train --config "$CONFIG" --workdir "$WORKDIR" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
