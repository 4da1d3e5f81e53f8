#!/usr/bin/env bash
# Build a minimal Debian 12 (bookworm) root filesystem with Python 3.11 using mmdebstrap and
# import it as the local image localhost/bookworm-python:3.11: the stand-in, on machines that
# cannot pull from a registry, for the official python:3.11-slim-bookworm.
#
# It mirrors what python:3.11-slim-bookworm has: a minbase Debian plus a Python 3.11 with venv
# and pip's bundled wheel (python3-venv), ca-certificates, netbase, tzdata. Like the official
# image it has NO git and NO tini, so the Dockerfile's final stage must install both, and that
# step is exercised here exactly as in CI.  WITH_TOOLS=1 adds git and tini to the base
# (the Dockerfile's apt step then finds them installed).
#
# The Debian mirror is the host's own: /etc/apt/sources.list.d/debian.sources (deb822) or the
# Debian lines of /etc/apt/sources.list are pasted into the rootfs; no host name is written here.
#
# Idempotent and cached, keyed by its inputs (this script, the apt sources, the package list):
#  - the image exists with the current key in its label: nothing to do (a second);
#  - the root filesystem for that key is in the cache: imported again (about 10 s);
#  - otherwise mmdebstrap makes it (2.5 to 4.5 minutes), keeps it in the cache and imports it.
# FORCE=1 makes it again whatever is cached.
set -euo pipefail

# The image cache (TTD_IMAGE_CACHE; CACHE, if set, still wins), which .ci/reset-machine removes.
# shellcheck source=.ci/machine-state.sh
source "$(dirname "${BASH_SOURCE[0]}")/../.ci/machine-state.sh"

IMAGE=${IMAGE:-localhost/bookworm-python:3.11}
CACHE=${CACHE:-$TTD_IMAGE_CACHE}
FORCE=${FORCE:-0}
WITH_TOOLS=${WITH_TOOLS:-0}
LABEL=time-to-dispatch.base-key

mkdir -p "$CACHE"
SOURCES=$(mktemp "$CACHE/sources.XXXXXX")
trap 'rm -f "$SOURCES"' EXIT
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$SOURCES"
elif grep -Eq '^deb .*/debian(-security)? ' /etc/apt/sources.list 2>/dev/null; then
  grep -E '^deb .*/debian(-security)? ' /etc/apt/sources.list > "$SOURCES"
else
  echo "no Debian apt source found on the host" >&2; exit 1
fi

INCLUDE=python3,python3-venv,ca-certificates,netbase,tzdata
[ "$WITH_TOOLS" = 1 ] && INCLUDE="$INCLUDE,git,tini"
KEY=$(cat "$0" "$SOURCES" <(echo "$INCLUDE") | sha256sum | cut -c1-16)
TAR="$CACHE/bookworm-python-rootfs-$KEY.tar"

if [ "$FORCE" != 1 ] && podman image exists "$IMAGE" && \
   [ "$(podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$IMAGE")" = "$KEY" ]; then
  echo "$IMAGE is up to date (key $KEY; FORCE=1 to make it again)"; exit 0
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap missing: run image/setup_engine.sh" >&2; exit 1; }

start=$(date +%s)
if [ "$FORCE" = 1 ] || [ ! -s "$TAR" ]; then
rm -f "$TAR" "$TAR.part"
# --variant=minbase: Essential + Priority:required + apt (what debian:bookworm-slim is made of).
# dpkg path-excludes drop docs, man pages and locales, as the slim images do.
# The hooks' "$1" is the root filesystem's folder, which mmdebstrap passes to the shell it runs
# each hook in: it must reach that shell unexpanded, hence the single quotes.
# shellcheck disable=SC2016
mmdebstrap --variant=minbase --format=tar --include="$INCLUDE" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log "$1"/var/log/apt/*' \
  --customize-hook='ln -sf python3 "$1"/usr/bin/python' \
  bookworm "$TAR.part" "$SOURCES"
mv "$TAR.part" "$TAR"
else
  echo "root filesystem from the cache: $TAR"
fi
mid=$(date +%s)

podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change "LABEL $LABEL=$KEY" \
  --message "mmdebstrap bookworm minbase + $INCLUDE" \
  "$TAR" "$IMAGE"
end=$(date +%s)
# Only the current key's root filesystem is kept.
find "$CACHE" -maxdepth 1 -name 'bookworm-python-rootfs-*.tar' ! -name "$(basename "$TAR")" -delete
echo "root filesystem: $((mid-start))s, import: $((end-mid))s"
podman image ls "$IMAGE"
podman run --rm "$IMAGE" python3 -c 'import sys, ssl, venv; print(sys.version); print(ssl.OPENSSL_VERSION)'
