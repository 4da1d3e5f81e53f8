# shellcheck shell=bash
# shellcheck disable=SC2034  # every variable here is for the scripts that source this file
#
# The state the test suite leaves on a machine outside the checkout, defined once: every path it
# writes, every list of Debian packages it installs, and the one function that installs them.
# Sourced, never executed, by tests/cluster/cluster.sh, image/setup_engine.sh,
# image/make_base.sh, .ci/shellcheck, .ci/browser and .ci/reset-machine (which removes all of
# it again); the Python tests read it through tests/helpers.machine_state(). docs/testing.md
# ("Fresh-machine state and the reset") lists the same in a table.
#
# Sourcing it only defines variables and functions: it sets no shell option, runs no command
# and prints nothing, so it is safe under the caller's `set -euo pipefail` and without it.
# Every path can be moved by setting the variable of the same name in the environment.

# ---------------------------------------------------------------------------------- paths
# tests/cluster/cluster.sh build: Kubernetes' source package, the compiled binaries and the
# pause image (kept between runs: the build takes 8 to 10 minutes).
TTD_K8S_CACHE=${TTD_K8S_CACHE:-/var/cache/time-to-dispatch-k8s}
# tests/cluster/cluster.sh up: etcd's data, the certificates and kubeconfigs, containerd's
# root, the daemons' logs (kept by `cluster.sh down`, removed by `cluster.sh purge`).
TTD_K8S_STATE=${TTD_K8S_STATE:-/var/lib/time-to-dispatch-k8s}
# tests/cluster/cluster.sh up: pid files, containerd's state and socket (removed by `down`).
TTD_K8S_RUN=${TTD_K8S_RUN:-/run/time-to-dispatch-k8s}
# tests/cluster/cluster.sh up: the local registry's storage, which tests/cluster/image.sh
# pushes the stage image to (inside the state folder unless moved).
TTD_K8S_REGISTRY_DATA=${TTD_K8S_REGISTRY_DATA:-$TTD_K8S_STATE/registry/data}
# image/setup_engine.sh (its stamp) and image/make_base.sh (the base's root filesystem); both
# scripts still take CACHE first, as before.
TTD_IMAGE_CACHE=${TTD_IMAGE_CACHE:-/var/cache/time-to-dispatch-image}
# podman, installed and configured by image/setup_engine.sh: images (the base, the runtime
# image and the cluster test's layer), containers, the build cache; and its run-time state.
TTD_CONTAINERS_STORAGE=${TTD_CONTAINERS_STORAGE:-/var/lib/containers/storage}
TTD_CONTAINERS_RUNROOT=${TTD_CONTAINERS_RUNROOT:-/run/containers/storage}
# podman's blob-information cache, beside its storage.
TTD_CONTAINERS_CACHE=${TTD_CONTAINERS_CACHE:-/var/lib/containers/cache}
# image/setup_engine.sh writes these three files (each with TTD_WRITTEN_MARK in it), keeping a
# packaged containers.conf or storage.conf it replaces as FILE.orig.
TTD_CONTAINERS_ETC=${TTD_CONTAINERS_ETC:-/etc/containers}
TTD_CONTAINERS_CONF=$TTD_CONTAINERS_ETC/containers.conf
TTD_CONTAINERS_STORAGE_CONF=$TTD_CONTAINERS_ETC/storage.conf
TTD_CONTAINERS_REGISTRIES_CONF=$TTD_CONTAINERS_ETC/registries.conf.d/99-local.conf
TTD_WRITTEN_MARK='written by setup_engine.sh'
# podman's network backend (netavark) keeps its lock here, and the definitions of networks
# other than the default one (the suite makes none: its containers use the host's network).
TTD_CONTAINERS_NETWORKS=$TTD_CONTAINERS_ETC/networks
# tests/cluster/cluster.sh ensure_debsrc: the deb-src entry `apt-get source kubernetes` needs,
# written only where the machine's apt sources have none.
TTD_DEBSRC_FILE=${TTD_DEBSRC_FILE:-/etc/apt/sources.list.d/ttd-debsrc.sources}
# ttd_apt_install: every Debian package it installed, one a line (what the reset purges).
TTD_PACKAGE_RECORD=${TTD_PACKAGE_RECORD:-/var/lib/time-to-dispatch/installed-packages}
# ttd_apt_install, for the time of one install only: stops packages' scripts from starting
# daemons (TTD_POLICY_MARK in it tells it from one the machine had).
TTD_POLICY_RC_D=${TTD_POLICY_RC_D:-/usr/sbin/policy-rc.d}
TTD_POLICY_MARK='written by ttd_apt_install'
# apt's package lists: ttd_apt_install runs `apt-get update` when they are missing or more
# than a day old (or when TTD_APT_UPDATE=1).
TTD_APT_LISTS=${TTD_APT_LISTS:-/var/lib/apt/lists}

# ------------------------------------------------------------------------ package lists
# tests/cluster/cluster.sh build and up: the Go toolchain that compiles Kubernetes, and the
# daemons and tools the cluster runs with.
TTD_CLUSTER_PACKAGES=(golang-go build-essential dpkg-dev rsync jq bash-completion
                      etcd-server containerd runc containernetworking-plugins docker-registry
                      skopeo busybox-static iptables iproute2 openssl socat conntrack
                      python3 curl ca-certificates util-linux procps)
# image/setup_engine.sh: the container engine, and mmdebstrap for image/make_base.sh.
TTD_ENGINE_PACKAGES=(podman buildah runc conmon golang-github-containers-common fuse-overlayfs
                     uidmap slirp4netns netavark aardvark-dns catatonit iptables mmdebstrap)
# tests/test_monitoring.py: promtool, which checks and unit-tests deploy/monitoring/alerts.yml.
TTD_MONITORING_PACKAGES=(prometheus)
# the static tox environment (.ci/shellcheck): shellcheck over every shell script.
TTD_STATIC_PACKAGES=(shellcheck)
# the tests tox environment (.ci/browser --install): the browser of the browser test.
TTD_BROWSER_PACKAGES=(chromium)

# What this file defines, by kind: .ci/reset-machine and the tests go through these names.
TTD_STATE_PATH_VARS=(TTD_K8S_CACHE TTD_K8S_STATE TTD_K8S_RUN TTD_K8S_REGISTRY_DATA
                     TTD_IMAGE_CACHE TTD_CONTAINERS_STORAGE TTD_CONTAINERS_RUNROOT TTD_CONTAINERS_CACHE
                     TTD_CONTAINERS_NETWORKS
                     TTD_CONTAINERS_CONF TTD_CONTAINERS_STORAGE_CONF
                     TTD_CONTAINERS_REGISTRIES_CONF TTD_DEBSRC_FILE TTD_PACKAGE_RECORD
                     TTD_POLICY_RC_D)
TTD_PACKAGE_LIST_VARS=(TTD_CLUSTER_PACKAGES TTD_ENGINE_PACKAGES TTD_MONITORING_PACKAGES
                       TTD_STATIC_PACKAGES TTD_BROWSER_PACKAGES)

# apt-get as every script runs it: waits up to 15 minutes for another apt to finish.
TTD_APT=(apt-get -o DPkg::Lock::Timeout=900)

# ---------------------------------------------------------------------------- functions
_ttd_log() { printf '[ttd_apt_install %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ttd_missing_packages PKG...: prints, one a line, those of the packages not installed.
ttd_missing_packages() {
  local p
  for p in "$@"; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || printf '%s\n' "$p"
  done
  return 0
}

# ttd_apt_install PKG...: installs those of the Debian packages that are missing (without
# recommends), needs root for that, and appends each one it installed to TTD_PACKAGE_RECORD.
# Every line apt prints goes to standard error; standard output stays empty. Returns non-zero
# if anything fails, whether or not the caller runs under `set -e`. Runs in a subshell, so that
# its trap (which removes the policy-rc.d it wrote, however it ends) stays its own.
ttd_apt_install() (
  local missing=() p fresh
  mapfile -t missing < <(ttd_missing_packages "$@")
  if ((${#missing[@]} == 0)); then
    _ttd_log "already installed: $*"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    _ttd_log "ERROR: installing ${missing[*]} needs root"
    return 1
  fi
  command -v apt-get >/dev/null || { _ttd_log "ERROR: no apt-get to install ${missing[*]} with"; return 1; }
  # Packages' scripts must not start daemons (etcd, containerd, the registry, prometheus):
  # invoke-rc.d and deb-systemd-invoke ask policy-rc.d, and exit 101 means "not allowed".
  if [ ! -e "$TTD_POLICY_RC_D" ]; then
    trap 'rm -f "$TTD_POLICY_RC_D"' EXIT
    trap 'exit 1' INT TERM HUP
    printf '#!/bin/sh\n# %s: no daemon starts while it installs packages\nexit 101\n' \
      "$TTD_POLICY_MARK" > "$TTD_POLICY_RC_D" || return 1
    chmod +x "$TTD_POLICY_RC_D" || return 1
  fi
  fresh=$(find "$TTD_APT_LISTS" -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null)
  if [ -z "$fresh" ] || [ "${TTD_APT_UPDATE:-0}" = 1 ]; then
    _ttd_log "apt-get update (package lists missing or older than a day)"
    DEBIAN_FRONTEND=noninteractive "${TTD_APT[@]}" update >&2 || { _ttd_log "ERROR: apt-get update failed"; return 1; }
  fi
  _ttd_log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive "${TTD_APT[@]}" install -y --no-install-recommends "${missing[@]}" >&2 \
    || { _ttd_log "ERROR: apt-get install ${missing[*]} failed"; return 1; }
  mkdir -p "$(dirname "$TTD_PACKAGE_RECORD")" || return 1
  for p in "${missing[@]}"; do
    if [ -z "$(ttd_missing_packages "$p")" ] && ! grep -qsxF -- "$p" "$TTD_PACKAGE_RECORD"; then
      printf '%s\n' "$p" >> "$TTD_PACKAGE_RECORD" || return 1
    fi
  done
  _ttd_log "installed ${missing[*]} (recorded in $TTD_PACKAGE_RECORD)"
)
