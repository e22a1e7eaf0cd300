#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every host (`--worker=all`); JAX discovers the slice
# (`--config.distributed.auto=True` → jax.distributed.initialize()), each host feeds its 1/hosts of the global batch,
# process 0 logs, every host writes its shards of the orbax checkpoints — so WORKDIR must be shared (gs://...).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# Assumes the repository and its .venv (pip install -e ".[tpu]") exist at REPO_DIR on every host.
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; CONFIG=${3:?config file}; WORKDIR=${4:?workdir (gs://...)}; shift 4
REPO_DIR=${REPO_DIR:-\$HOME/lav2_jax}
EXTRA=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && .venv/bin/python -m lav2_jax.cli.main train --config $CONFIG --workdir $WORKDIR \
   --config.distributed.auto=True --config.log.progress=False$EXTRA"
