#!/usr/bin/env bash
# Install and configure a rootful podman/buildah engine on Debian 12 (bookworm) that works on
# this kind of machine (Firecracker VM, kernel with a mixed cgroup v1 + v2 layout, ext4 root).
# Idempotent and cached: a run that succeeded leaves a stamp under /var/cache/time-to-dispatch-image/
# keyed by this script and the host's limits; with the stamp there and podman answering, a
# second run does nothing. Otherwise it installs what is missing and rewrites the same config.
# Needs root (apt, /etc/containers).
#
#  - runtime runc (crun 1.8 rejects the mixed cgroup layout), cgroup manager cgroupfs (no systemd)
#  - default ulimits capped at the host's hard limits (podman's defaults, nofile 1048576, exceed
#    them and runc then fails to start any container)
#  - storage driver overlay (native kernel overlayfs on ext4; fuse-overlayfs only as fallback)
#  - events logger 'file' (no journald here)
# Does not install docker.io; coexists with Debian's containerd package (both use runc).
set -euo pipefail

CACHE=${CACHE:-/var/cache/time-to-dispatch-image}
STAMP="$CACHE/engine-$(cat "$0" <(ulimit -Hn) /proc/sys/kernel/pid_max | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && podman info >/dev/null 2>&1; then
  echo "engine ready ($STAMP)"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "setup_engine.sh needs root (apt-get, /etc/containers)" >&2; exit 1; }

APT=(apt-get -o DPkg::Lock::Timeout=900)
PKGS=(podman buildah runc conmon golang-github-containers-common fuse-overlayfs uidmap
      slirp4netns netavark aardvark-dns catatonit iptables mmdebstrap)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  # The package lists must exist; refresh them only if they are missing or older than a day.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    "${APT[@]}" update
  fi
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${missing[@]}"
else
  echo "all packages present"
fi

# Ulimits: podman's default is nofile=1048576 and nproc=4194304 (or the caller's), more than
# the host allows; use the host's hard limits, capped.
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
nofile=$(( hard_nofile < 1048576 ? hard_nofile : 1048576 ))
pid_max=$(cat /proc/sys/kernel/pid_max)
hard_nproc=$(ulimit -Hu); [ "$hard_nproc" = unlimited ] && hard_nproc=$pid_max
nproc=$(( hard_nproc < pid_max ? hard_nproc : pid_max ))

mkdir -p /etc/containers
# Keep a copy of the packaged file the first time only.
[ -f /etc/containers/containers.conf ] && [ ! -f /etc/containers/containers.conf.orig ] && \
  ! grep -q 'written by setup_engine.sh' /etc/containers/containers.conf && \
  cp /etc/containers/containers.conf /etc/containers/containers.conf.orig
cat > /etc/containers/containers.conf <<EOF
# written by setup_engine.sh
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

if [ ! -f /etc/containers/storage.conf ] || ! grep -q 'written by setup_engine.sh' /etc/containers/storage.conf; then
  [ -f /etc/containers/storage.conf ] && cp -n /etc/containers/storage.conf /etc/containers/storage.conf.orig
  cat > /etc/containers/storage.conf <<'EOF'
# written by setup_engine.sh
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"

[storage.options.overlay]
mountopt = "nodev"
EOF
fi

# Short names (e.g. python:3.11-slim-bookworm) must not trigger a prompt or a registry lookup
# that cannot succeed here; local images are referenced as localhost/NAME:TAG.
mkdir -p /etc/containers/registries.conf.d
cat > /etc/containers/registries.conf.d/99-local.conf <<'EOF'
# written by setup_engine.sh
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
