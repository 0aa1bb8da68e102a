#!/usr/bin/env bash
# Start this host's autotrain workers with the settings in /etc/autotrain/env (if present).
# Usage: workers/run-worker.sh [autotrain worker options], e.g. --gpus 0,1
set -euo pipefail
if [[ -f /etc/autotrain/env ]]; then
  set -a; source /etc/autotrain/env; set +a
fi
export CUDA_DEVICE_ORDER=PCI_BUS_ID
exec autotrain worker "$@"
