#!/usr/bin/env bash
# Run a thresher config on a Spark cluster through Beam's Spark job server, SDK workers in
# Docker from the worker image (deploy/Dockerfile); see deploy/spark/README.md.
#   deploy/spark/run.sh CONFIG SPARK_MASTER_URL IMAGE [extra beam flags]
set -euo pipefail
cfg=$1 master=$2 image=$3; shift 3
exec thresher run "$cfg" --runner=SparkRunner --spark_master_url="$master" \
  --environment_type=DOCKER --environment_config="$image" "$@"
