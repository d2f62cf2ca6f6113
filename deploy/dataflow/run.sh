#!/usr/bin/env bash
# Run a thresher config on Google Cloud Dataflow with the worker image from deploy/Dockerfile
# (or deploy/Dockerfile.gpu); see deploy/dataflow/README.md.
#   deploy/dataflow/run.sh CONFIG PROJECT REGION BUCKET IMAGE [extra beam flags]
# Add --dry_run=True to build the job and print its steps without submitting it.
set -euo pipefail
cfg=$1 project=$2 region=$3 bucket=$4 image=$5; shift 5
exec thresher run "$cfg" \
  --runner=DataflowRunner --project="$project" --region="$region" \
  --temp_location="gs://$bucket/tmp" --staging_location="gs://$bucket/staging" \
  --sdk_container_image="$image" --experiments=use_runner_v2 \
  --max_num_workers=100 "$@"
