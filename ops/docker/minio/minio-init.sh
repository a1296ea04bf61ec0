#!/bin/sh
# Runs once in the minio/mc container (service minio-init) after MinIO is healthy. Idempotent.
#  * buckets of the lake: $LAKE_BUCKETS (raw-data models features)
#  * a least-privilege policy `retail-platform` attached to the platform's access key LAKE_ACCESS_KEY:
#    object read/write/delete + list on those buckets only (no bucket creation/deletion, no admin), plus
#    bucket create/delete on the scratch buckets $LAKE_SCRATCH_BUCKETS (the load test's bench-raw-data).
set -eu
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is required}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is required}"
: "${LAKE_ACCESS_KEY:?LAKE_ACCESS_KEY is required}"
: "${LAKE_SECRET_KEY:?LAKE_SECRET_KEY is required}"
BUCKETS="${LAKE_BUCKETS:-raw-data models features}"
# scratch buckets the platform may create and delete itself (ops.bench_stream's load test)
SCRATCH_BUCKETS="${LAKE_SCRATCH_BUCKETS:-bench-raw-data}"
MINIO_URL="${MINIO_URL:-http://minio:9000}"

mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" > /dev/null

resources=""
for b in $BUCKETS; do
  mc mb --ignore-existing "local/$b"
  resources="$resources\"arn:aws:s3:::$b\",\"arn:aws:s3:::$b/*\","
done
resources="${resources%,}"
scratch=""
for b in $SCRATCH_BUCKETS; do
  scratch="$scratch\"arn:aws:s3:::$b\",\"arn:aws:s3:::$b/*\","
done
scratch="${scratch%,}"

policy=/tmp/retail-platform-policy.json
cat > "$policy" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads",
                 "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": [$resources]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:CreateBucket", "s3:DeleteBucket", "s3:GetBucketLocation", "s3:ListBucket",
                 "s3:ListBucketMultipartUploads", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": [$scratch]
    }
  ]
}
JSON

# create (or update) the policy and the user; attaching an already attached policy is not an error here
mc admin policy create local retail-platform "$policy"
mc admin user add local "$LAKE_ACCESS_KEY" "$LAKE_SECRET_KEY"
if ! out=$(mc admin policy attach local retail-platform --user "$LAKE_ACCESS_KEY" 2>&1); then
  case "$out" in
    *"already"*) echo "policy retail-platform already attached to $LAKE_ACCESS_KEY" ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "minio-init: buckets [$BUCKETS] ready; user $LAKE_ACCESS_KEY has policy retail-platform"
