#!/usr/bin/env bash
# The one place the cluster test gets its stage image from:
#
#   tests/cluster/image.sh CA_CERT GIT_URL PROXY_URL
#
# 1. The stages' runtime image: $TTD_RUNTIME_IMAGE if set (an image in podman's storage),
#    else built by the repository's own image/build.sh (after image/setup_engine.sh and
#    image/make_base.sh, when they exist).
# 2. The cluster test's layer on top, which only makes the pods trust this machine's test
#    servers: the test CA (git's sslCAInfo for GIT_URL; requests' bundle), and HTTPS_PROXY
#    pointing at the test's stand-in for Docker Hub (Bodywork asks Docker Hub whether the
#    image exists before it deploys; the stand-in answers from the local registry and refuses
#    every other host, so nothing in a pod can reach beyond this machine).
# 3. Pushed to the cluster's local registry as ttd-test/time-to-dispatch:TAG, and as
#    bodyworkml/bodywork-core:latest, the image Bodywork's cronjob runs its workflow in.
#    containerd serves docker.io names from the local registry (see cluster.sh), so these
#    Docker-Hub-style names, the only form Bodywork 3.0 accepts, never leave the machine.
#
# Prints the Docker-Hub-style name for bodywork.yaml's docker_image as its last line.
set -Eeuo pipefail
[ $# = 3 ] || { echo "usage: $0 CA_CERT GIT_URL PROXY_URL" >&2; exit 2; }
CA_CERT=$1 GIT_URL=$2 PROXY_URL=$3
REGISTRY=${TTD_K8S_REGISTRY:-127.0.0.1:5000}
REPOSITORY=ttd-test/time-to-dispatch
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { printf '[image.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

runtime=${TTD_RUNTIME_IMAGE:-}
if [ -z "$runtime" ]; then
  [ -x "$ROOT/image/build.sh" ] || {
    log "ERROR: no runtime image: set TTD_RUNTIME_IMAGE or add image/build.sh"; exit 1; }
  if [ -x "$ROOT/image/setup_engine.sh" ]; then "$ROOT/image/setup_engine.sh" >&2; fi
  if [ -x "$ROOT/image/make_base.sh" ]; then "$ROOT/image/make_base.sh" >&2; fi
  log "building the runtime image with image/build.sh"
  runtime=$("$ROOT/image/build.sh" | tee /dev/stderr | tail -1)
fi
podman image exists "$runtime" || { log "ERROR: runtime image $runtime is not in podman's storage"; exit 1; }
log "runtime image: $runtime"

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
cp "$CA_CERT" "$ctx/ca.crt"
printf '[http "%s"]\n\tsslCAInfo = /etc/ttd-cluster-test/ca.crt\n' "$GIT_URL" > "$ctx/gitconfig"
proxy_host=${PROXY_URL#*://}; proxy_host=${proxy_host%%:*}
cat > "$ctx/Containerfile" <<EOF
FROM $runtime
COPY ca.crt /etc/ttd-cluster-test/ca.crt
COPY gitconfig /etc/gitconfig
ENV HTTPS_PROXY=$PROXY_URL https_proxy=$PROXY_URL \\
    NO_PROXY=$proxy_host,10.96.0.1,127.0.0.1,localhost no_proxy=$proxy_host,10.96.0.1,127.0.0.1,localhost \\
    REQUESTS_CA_BUNDLE=/etc/ttd-cluster-test/ca.crt
EOF
tag=$( { podman image inspect --format '{{.Id}}' "$runtime"; cat "$ctx/ca.crt" "$ctx/gitconfig" "$ctx/Containerfile"; } \
       | sha256sum | cut -c1-16)
local_name=localhost/ttd-cluster-test:$tag
if ! podman image exists "$local_name"; then
  podman build --quiet --network=none -f "$ctx/Containerfile" -t "$local_name" "$ctx" >&2
fi
for dest in "$REPOSITORY:$tag" bodyworkml/bodywork-core:latest; do
  log "pushing $local_name to $REGISTRY/$dest"
  podman push --quiet --tls-verify=false "$local_name" "docker://$REGISTRY/$dest" >&2
done
echo "$REPOSITORY:$tag"
