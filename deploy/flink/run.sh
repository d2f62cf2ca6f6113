#!/usr/bin/env bash
# Run a thresher config on a Flink cluster through Beam's Flink job server, SDK workers in
# Docker from the worker image (deploy/Dockerfile); see deploy/flink/README.md.
#   deploy/flink/run.sh CONFIG FLINK_MASTER FLINK_VERSION IMAGE [extra beam flags]
# FLINK_VERSION is the cluster's (Beam 2.77 ships job servers for 1.19, 1.20, 2.0, 2.1 and 2.2).
set -euo pipefail
cfg=$1 master=$2 version=$3 image=$4; shift 4
exec thresher run "$cfg" --runner=FlinkRunner --flink_master="$master" --flink_version="$version" \
  --environment_type=DOCKER --environment_config="$image" --parallelism=64 "$@"
