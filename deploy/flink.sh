#!/usr/bin/env bash
# Run a thresher config on a Flink cluster through Beam's Flink job server.
#   deploy/flink.sh CONFIG FLINK_MASTER IMAGE [extra beam flags]
set -euo pipefail
cfg=$1 master=$2 image=$3; shift 3
exec thresher run "$cfg" --runner=FlinkRunner --flink_master="$master" \
  --environment_type=DOCKER --environment_config="$image" --parallelism=64 "$@"
