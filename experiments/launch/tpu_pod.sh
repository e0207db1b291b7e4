#!/usr/bin/env bash
# Launch a trellis-jax training job on every host of a Cloud TPU pod slice (or several slices).
#
#   experiments/launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra --config.* overrides]
#   e.g. experiments/launch/tpu_pod.sh my-v5p-128 us-east5-a \
#          experiments/train/slat_flow.py:img_L gs://bucket/runs/slat_flow_L \
#          --config.mesh.data=4 --config.mesh.fsdp=16 --config.mesh.tensor=1
#
# Every host runs the same command on the same commit (REF, default: the local HEAD). With
# `--config.distributed=True`, trellis_jax.train calls jax.distributed.initialize() before touching
# the devices (coordinator address, process count and id come from the TPU metadata), builds the mesh
# from the config's `mesh` block and shards params / AdamW moments / EMA by the config's logical-axis
# rules (trellis_jax/training/sharding.py: `embed`, `cond`, `conv_in` -> fsdp; `mlp`, `qkv`,
# `conv_out` -> tensor; norms and io replicated; override with --config.sharding.rules).
#
# Mesh: data x fsdp x tensor must equal the number of chips of the whole job (v5p-128: 64 chips); one
# axis may be -1 (the rest). Batches (config batch_size = the global batch) are split over data x fsdp,
# so batch_size must be a multiple of data*fsdp; each host loads batch_size / num_hosts examples.
# Multi-slice (MEGASCALE_* set by the TPU runtime): the slices are laid out along `data` (or `fsdp`
# if data is not a multiple of the slice count), so only gradient all-reduces cross DCN.
# The workdir must be storage every host sees (GCS) for orbax checkpoints; a checkpoint restores onto
# any other mesh (e.g. resume a v5p-128 run on a v5p-32 with --config.mesh.fsdp=-1).
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n 2,7p "$0" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO=${REPO:-https://github.com/your-org/trellis-jax.git}
REF=${REF:-$(git rev-parse HEAD 2>/dev/null || echo main)}
EXTRA=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  if [ ! -d trellis-jax ]; then git clone $REPO trellis-jax; fi
  cd trellis-jax && git fetch -q origin && git checkout -q $REF
  if [ ! -d .venv ]; then python3 -m venv .venv; fi
  . .venv/bin/activate
  pip install -q -U 'jax[tpu]' -e .
  python -m trellis_jax.train --config $CONFIG --workdir $WORKDIR --config.distributed=True$EXTRA
"
