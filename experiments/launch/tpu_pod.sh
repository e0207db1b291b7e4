#!/usr/bin/env bash
# Launch a trellis-jax training job on every host of a Cloud TPU pod slice.
#
#   experiments/launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra --config.* overrides]
#   e.g. experiments/launch/tpu_pod.sh my-v5p-128 us-east5-a \
#          experiments/train/slat_flow.py:img_L gs://bucket/runs/slat_flow_L \
#          --config.mesh.fsdp=16 --config.mesh.data=4
#
# Every host runs the same command; `trellis_jax.train` calls jax.distributed.initialize() on TPU
# pods (coordinator and process ids come from the TPU metadata), builds the mesh from the config's
# `mesh` block (axes data, fsdp, tensor) and shards params/optimizer state by the config's logical
# axis rules. The workdir must be on storage every host sees (GCS) for orbax checkpoints.
set -euo pipefail
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO=${REPO:-https://github.com/your-org/trellis-jax.git}
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  if [ ! -d trellis-jax ]; then git clone $REPO trellis-jax; fi
  cd trellis-jax && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -U 'jax[tpu]' -e .
  python -m trellis_jax.train --config $CONFIG --workdir $WORKDIR --config.distributed=True $*
"
