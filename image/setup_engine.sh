#!/usr/bin/env bash
# Install and configure a rootful podman/buildah engine on Debian 12 (bookworm) that works on
# this kind of machine (Firecracker VM, kernel with a mixed cgroup v1 + v2 layout, ext4 root).
# Idempotent and cached: a run that succeeded leaves a stamp in the image cache (TTD_IMAGE_CACHE,
# /var/cache/time-to-dispatch-image unless CACHE or TTD_IMAGE_CACHE says otherwise) keyed by this
# script, .ci/machine-state.sh (the package list and the paths) and the host's limits; with the
# stamp there and podman answering, a second run does nothing. Otherwise it installs what is
# missing and rewrites the same config. Needs root (apt, /etc/containers).
#
#  - runtime runc (crun 1.8 rejects the mixed cgroup layout), cgroup manager cgroupfs (no systemd)
#  - default ulimits capped at the host's hard limits (podman's defaults, nofile 1048576, exceed
#    them and runc then fails to start any container)
#  - storage driver overlay (native kernel overlayfs on ext4; fuse-overlayfs only as fallback)
#  - events logger 'file' (no journald here)
# Does not install docker.io; coexists with Debian's containerd package (both use runc).
set -euo pipefail

# The cache, podman's storage and configuration files, the package list: .ci/reset-machine
# removes what this script leaves on the machine.
MACHINE_STATE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.ci" && pwd)/machine-state.sh
# shellcheck source=.ci/machine-state.sh
source "$MACHINE_STATE"

CACHE=${CACHE:-$TTD_IMAGE_CACHE}
STAMP="$CACHE/engine-$(cat "${BASH_SOURCE[0]}" "$MACHINE_STATE" <(ulimit -Hn) /proc/sys/kernel/pid_max | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && podman info >/dev/null 2>&1; then
  echo "engine ready ($STAMP)"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "setup_engine.sh needs root (apt-get, /etc/containers)" >&2; exit 1; }

# Only the missing packages (apt-get update first when its lists are missing or older than a
# day), recorded for the reset.
ttd_apt_install "${TTD_ENGINE_PACKAGES[@]}"

# Ulimits: podman's default is nofile=1048576 and nproc=4194304 (or the caller's), more than
# the host allows; use the host's hard limits, capped.
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
nofile=$(( hard_nofile < 1048576 ? hard_nofile : 1048576 ))
pid_max=$(cat /proc/sys/kernel/pid_max)
hard_nproc=$(ulimit -Hu); [ "$hard_nproc" = unlimited ] && hard_nproc=$pid_max
nproc=$(( hard_nproc < pid_max ? hard_nproc : pid_max ))

mkdir -p "$TTD_CONTAINERS_ETC"
# Keep a copy of the packaged file the first time only.
if [ -f "$TTD_CONTAINERS_CONF" ] && [ ! -f "$TTD_CONTAINERS_CONF.orig" ] && \
   ! grep -qF "$TTD_WRITTEN_MARK" "$TTD_CONTAINERS_CONF"; then
  cp "$TTD_CONTAINERS_CONF" "$TTD_CONTAINERS_CONF.orig"
fi
cat > "$TTD_CONTAINERS_CONF" <<EOF
# $TTD_WRITTEN_MARK
[containers]
default_ulimits = [
  "nofile=${nofile}:${nofile}",
  "nproc=${nproc}:${nproc}",
]
# no systemd in this VM
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# podman's own init for --init (catatonit); not used by the image, which brings tini
init_path = "/usr/bin/catatonit"

[network]
network_backend = "netavark"
EOF

if [ ! -f "$TTD_CONTAINERS_STORAGE_CONF" ] || ! grep -qF "$TTD_WRITTEN_MARK" "$TTD_CONTAINERS_STORAGE_CONF"; then
  if [ -f "$TTD_CONTAINERS_STORAGE_CONF" ]; then cp -n "$TTD_CONTAINERS_STORAGE_CONF" "$TTD_CONTAINERS_STORAGE_CONF.orig"; fi
  cat > "$TTD_CONTAINERS_STORAGE_CONF" <<EOF
# $TTD_WRITTEN_MARK
[storage]
driver = "overlay"
runroot = "$TTD_CONTAINERS_RUNROOT"
graphroot = "$TTD_CONTAINERS_STORAGE"

[storage.options.overlay]
mountopt = "nodev"
EOF
fi

# Short names (e.g. python:3.11-slim-bookworm) must not trigger a prompt or a registry lookup
# that cannot succeed here; local images are referenced as localhost/NAME:TAG.
mkdir -p "$(dirname "$TTD_CONTAINERS_REGISTRIES_CONF")"
cat > "$TTD_CONTAINERS_REGISTRIES_CONF" <<EOF
# $TTD_WRITTEN_MARK
short-name-mode = "permissive"
EOF

podman --version
buildah --version
runc --version | head -1
podman info --format 'runtime={{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Version}}
cgroupManager={{.Host.CgroupManager}} cgroupVersion={{.Host.CgroupsVersion}}
storage={{.Store.GraphDriverName}} root={{.Store.GraphRoot}}
network={{.Host.NetworkBackend}}' 2>&1
mkdir -p "$CACHE"
find "$CACHE" -maxdepth 1 -name 'engine-*' -delete
touch "$STAMP"
echo "setup_engine: OK"
