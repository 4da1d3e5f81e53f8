#!/usr/bin/env bash
# Build the stages' runtime image with podman from the repository root's Dockerfile:
#   image/build.sh [extra podman build arguments, e.g. --no-cache]
# IMAGE (default localhost/time-to-dispatch-runtime) is tagged with image/tag.py's tag;
# BASE_IMAGE (default localhost/bookworm-python:3.11, made by image/make_base.sh) is the base.
# pip inside the build reaches the same index, through the same CA bundle, as the host's pip:
# both are read from the host's pip configuration (PIP_CERT / PIP_INDEX_URL first, then
# `pip config get global.cert|global.index-url`) and handed to the build as secrets, never
# written into the context or the image. Prints the build's output, the image's size and layer
# list on standard error, and the image's name alone on standard output (callers capture it).
set -euo pipefail
# Standard output is kept on descriptor 3 for the image's name; everything else goes to stderr.
exec 3>&1 1>&2
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-localhost/bookworm-python:3.11}
IMAGE=${IMAGE:-localhost/time-to-dispatch-runtime}:$(python3 image/tag.py)
PIP=(python3 -m pip)

secrets=()
tmpd=$(mktemp -d); trap 'rm -rf "$tmpd"' EXIT
cert=${PIP_CERT:-$("${PIP[@]}" config get global.cert 2>/dev/null || true)}
if [ -z "$cert" ] && [ -n "${REQUESTS_CA_BUNDLE:-}" ]; then cert=$REQUESTS_CA_BUNDLE; fi
if [ -n "$cert" ] && [ -s "$cert" ]; then
  echo "pip CA bundle from the host: $cert"
  secrets+=(--secret "id=pip_cert,src=$cert")
fi
index=${PIP_INDEX_URL:-$("${PIP[@]}" config get global.index-url 2>/dev/null || true)}
case "$index" in
  ""|file:*) ;;   # unset: pip's default index; file:// paths do not exist inside the build
  *) printf '%s' "$index" > "$tmpd/index"; secrets+=(--secret "id=pip_index_url,src=$tmpd/index")
     echo "pip index from the host's configuration (passed as a secret)";;
esac

start=$(date +%s)
# --network=host: the build's pip and apt use the host's network path as they are.
podman build --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" "${secrets[@]}" \
  --file Dockerfile --tag "$IMAGE" "$@" .
echo "build: $(( $(date +%s) - start ))s, base $BASE_IMAGE"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "image size: $size bytes ($((size / 1000000)) MB); layers:"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150
echo "$IMAGE" >&3
