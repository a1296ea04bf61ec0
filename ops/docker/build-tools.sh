#!/bin/sh
# Build the container tools the compose checks use without a Docker engine, from the Go module proxy,
# into .cache/bin (cached; skipped when already built):
#  * the real Docker Compose CLI v2 -> .cache/bin/compose/docker-compose: tests/test_compose.py runs
#    `docker-compose config` on docker-compose.yml. `go install .../compose/v2/cmd@...` is refused (the
#    module's go.mod has exclude directives), so the module is built as the main module. ~11 min on 2 cores.
#  * the MinIO client mc -> .cache/bin/mc/mc: tests/test_compose_entrypoint.py runs
#    ops/docker/minio/minio-init.sh with it against the native MinIO. ~4 min on 2 cores.
set -eu
COMPOSE_VERSION="${COMPOSE_VERSION:-v2.40.3}"
MC_VERSION="${MC_VERSION:-v0.0.0-20250313080218-cf909e1063a9}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
command -v go > /dev/null || { echo "Go is not on PATH (needed to build the compose tools)" >&2; exit 1; }
export CGO_ENABLED=0
mkdir -p "$ROOT/.cache/bin"

OUT="$ROOT/.cache/bin/compose/docker-compose"
if [ -x "$OUT" ]; then
  echo "$OUT already built"
else
  DIR="$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  SRC="$ROOT/.cache/compose-src-$COMPOSE_VERSION"
  rm -rf "$SRC" && cp -r "$DIR" "$SRC" && chmod -R u+w "$SRC"
  mkdir -p "$(dirname "$OUT")"
  (cd "$SRC" && go build -trimpath \
     -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" -o "$OUT" ./cmd)
  rm -rf "$SRC"
  "$OUT" version
fi

MC="$ROOT/.cache/bin/mc/mc"
if [ -x "$MC" ]; then
  echo "$MC already built"
else
  GOBIN="$(dirname "$MC")" go install "github.com/minio/mc@$MC_VERSION"
  "$MC" --version | head -1
fi
