#!/bin/sh
# Runs once in the minio/mc container (service minio-init) after MinIO is healthy. Idempotent.
#  * buckets of the lake: $LAKE_BUCKETS (raw-data models features)
#  * one MinIO user and one least-privilege policy per service that touches the lake ($LAKE_SERVICES):
#    the policy is ops/docker/minio/policies/lake-<service>.json (S3 policy language; $POLICY_DIR), the user's
#    keys come from LAKE_<SERVICE>_ACCESS_KEY / LAKE_<SERVICE>_SECRET_KEY (required, never in the repo):
#      producer  raw-data read/write (reference files, upsert), existence check of models/features
#      stream    raw-data read/write (events, alerts, reference read), nothing else
#      airflow   raw-data read-only; models and features read/write/delete (ETL staging, features, models)
#      loadtest  the scratch bucket bench-raw-data only (create/delete it and its objects), existence checks
#    No service gets bucket creation on the lake buckets, admin rights or the root credentials; the dashboard
#    has no lake access at all. tests/test_compose_entrypoint.py runs this script with the real `mc` against
#    a real MinIO and checks each user's allowed and refused operations.
# Exit status: 0 when every bucket, policy and user is in place; non-zero (with the message of `mc`, or
# "<VAR> is required") otherwise.
set -eu
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is required}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is required}"
BUCKETS="${LAKE_BUCKETS:-raw-data models features}"
SERVICES="${LAKE_SERVICES:-producer stream airflow loadtest}"
POLICY_DIR="${POLICY_DIR:-$(cd "$(dirname "$0")" && pwd)/policies}"
MINIO_URL="${MINIO_URL:-http://minio:9000}"

# every service's keys and policy file first: fail before changing anything, naming the missing variable
seen=" "
for svc in $SERVICES; do
  up=$(echo "$svc" | tr '[:lower:]-' '[:upper:]_')
  eval "key=\${LAKE_${up}_ACCESS_KEY:-}"
  eval "secret=\${LAKE_${up}_SECRET_KEY:-}"
  [ -n "$key" ] || { echo "LAKE_${up}_ACCESS_KEY is required" >&2; exit 2; }
  [ -n "$secret" ] || { echo "LAKE_${up}_SECRET_KEY is required" >&2; exit 2; }
  [ -f "$POLICY_DIR/lake-$svc.json" ] || { echo "policy file $POLICY_DIR/lake-$svc.json is missing" >&2; exit 2; }
  case "$seen" in
    *" $key "*) echo "LAKE_${up}_ACCESS_KEY repeats another service's key: each service needs its own" >&2; exit 2 ;;
  esac
  seen="$seen$key "
done

mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" > /dev/null

for b in $BUCKETS; do
  mc mb --ignore-existing "local/$b"
done

for svc in $SERVICES; do
  up=$(echo "$svc" | tr '[:lower:]-' '[:upper:]_')
  eval "key=\${LAKE_${up}_ACCESS_KEY}"
  eval "secret=\${LAKE_${up}_SECRET_KEY}"
  policy="lake-$svc"
  # create (or update) the policy and the user; attaching an already attached policy is not an error here
  mc admin policy create local "$policy" "$POLICY_DIR/$policy.json"
  mc admin user add local "$key" "$secret"
  if ! out=$(mc admin policy attach local "$policy" --user "$key" 2>&1); then
    case "$out" in
      *"already"*) echo "policy $policy already attached to $key" ;;
      *) echo "$out" >&2; exit 1 ;;
    esac
  fi
  echo "minio-init: user $key has policy $policy"
done
echo "minio-init: buckets [$BUCKETS] ready; services [$SERVICES] have their own keys"
