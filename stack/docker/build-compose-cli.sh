#!/bin/sh
# Build the real Docker Compose CLI (v2) from the Go module proxy into .cache/bin/compose/docker-compose,
# so tests/test_compose.py can run `docker-compose config` on docker-compose.yml without a Docker engine.
# `go install github.com/docker/compose/v2/cmd@...` is refused (the module's go.mod has exclude directives),
# so the module is downloaded and built as the main module. About 11 minutes on 2 cores; cached afterwards.
set -eu
VERSION="${COMPOSE_VERSION:-v2.40.3}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$ROOT/.cache/bin/compose/docker-compose"
if [ -x "$OUT" ] && [ -f "$OUT.version" ] && [ "$(cat "$OUT.version")" = "$VERSION" ]; then
  echo "$OUT ($VERSION) already built"; exit 0
fi
command -v go > /dev/null || { echo "Go is not on PATH (needed to build the Compose CLI)" >&2; exit 1; }
DIR="$(go mod download -json "github.com/docker/compose/v2@$VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
SRC="$ROOT/.cache/compose-src-$VERSION"
rm -rf "$SRC" && cp -r "$DIR" "$SRC" && chmod -R u+w "$SRC"
mkdir -p "$(dirname "$OUT")"
(cd "$SRC" && CGO_ENABLED=0 go build -trimpath \
   -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$VERSION" -o "$OUT" ./cmd)
echo "$VERSION" > "$OUT.version"
rm -rf "$SRC"
"$OUT" version
