#!/usr/bin/env bash
# A single-node, throwaway Kubernetes 1.20.2 built from Debian's source package, on which
# tests/cluster/test_cluster.py deploys the pipeline with Bodywork's own CLI.
# See docs/testing.md ("The cluster test") for what it is and how long it takes.
#
#   cluster.sh build    install Debian packages, fetch the kubernetes source, build the
#                       binaries and the pause image into the cache (idempotent: a no-op
#                       when the cache holds them)
#   cluster.sh up       start etcd, containerd (a private instance), a registry, the API
#                       server, controller-manager, scheduler and kubelet; wait for the node
#                       and the default service account (idempotent; builds if needed)
#   cluster.sh down     stop everything; unmount; delete the bridge, veths and iptables chains
#                       (the state - etcd data, certificates, registry - is kept)
#   cluster.sh purge    down, then delete the state directory (the cache stays)
#   cluster.sh status   what runs
#   cluster.sh env      print `export KUBECONFIG=...` and the PATH holding kubectl
#   cluster.sh kubectl ARGS...
#
# Everything listens on 127.0.0.1 or on the bridge gateway address this script creates
# (10.244.0.1 on ttd-cni0); pods are never forwarded anywhere else (see net_up), and
# containerd pulls every image, whatever registry its name says, from the local registry.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The cache, state and run folders, the deb-src entry and the package list: one definition
# for the whole suite, which .ci/reset-machine removes again.
# shellcheck source=.ci/machine-state.sh
source "$HERE/../../.ci/machine-state.sh"

K8S_VERSION=${K8S_VERSION:-v1.20.2}
CACHE_ROOT=$TTD_K8S_CACHE
CACHE=$CACHE_ROOT/$K8S_VERSION
BIN=$CACHE/bin
IMAGES=$CACHE/images
SRC_ROOT=$CACHE_ROOT/src
STATE=$TTD_K8S_STATE
RUN=$TTD_K8S_RUN
LOGS=$STATE/logs
PIDS=$RUN/pids

BRIDGE=${TTD_K8S_BRIDGE:-ttd-cni0}
POD_CIDR=${TTD_K8S_POD_CIDR:-10.244.0.0/24}
GATEWAY=${TTD_K8S_GATEWAY:-10.244.0.1}
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SVC_IP=10.96.0.1
APISERVER_PORT=${TTD_K8S_APISERVER_PORT:-6443}
ETCD_PORT=${TTD_K8S_ETCD_PORT:-12379}
ETCD_PEER_PORT=${TTD_K8S_ETCD_PEER_PORT:-12380}
REGISTRY_ADDR=${TTD_K8S_REGISTRY:-127.0.0.1:5000}
CTRD_SOCK=$RUN/containerd/containerd.sock
PAUSE_IMAGE=registry.k8s.io/pause:3.2
FW_CHAIN=TTD-K8S-FW     # filter table, hooked from FORWARD and INPUT
NAT_CHAIN=TTD-K8S-NAT   # nat table, hooked from PREROUTING

APT=("${TTD_APT[@]}")
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

log() { printf '[cluster.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# --------------------------------------------------------------------- build
# Only the missing packages, recorded for the reset; apt's output on standard error, and no
# package's script starts its daemon (etcd, containerd, the registry): see ttd_apt_install.
ensure_packages() {
  ttd_apt_install "${TTD_CLUSTER_PACKAGES[@]}" || die "could not install the cluster's Debian packages"
}

ensure_debsrc() {
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    local uri
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || die "no URIs: line in /etc/apt/sources.list.d/debian.sources to add a deb-src entry for"
    log "adding deb-src entry for $uri bookworm"
    cat > "$TTD_DEBSRC_FILE" <<EOF
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    "${APT[@]}" update >&2
  fi
}

source_dir() {  # the first kubernetes-*/ folder under SRC_ROOT (no trailing slash), or nothing
  local dirs=("$SRC_ROOT"/kubernetes-*/)
  if [ -d "${dirs[0]}" ]; then printf '%s\n' "${dirs[0]%/}"; fi
}

fetch_source() {  # prints the source folder, and nothing else, on standard output
  local dir
  dir=$(source_dir)
  if [ -n "$dir" ] && [ -f "$dir/Makefile" ]; then echo "$dir"; return; fi
  ensure_debsrc
  mkdir -p "$SRC_ROOT"
  log "fetching kubernetes source package (apt-get source)"
  (cd "$SRC_ROOT" && "${APT[@]}" source kubernetes >&2)
  dir=$(source_dir)
  [ -n "$dir" ] || die "apt-get source kubernetes left no kubernetes-*/ folder in $SRC_ROOT"
  echo "$dir"
}

build_pause() {
  local src=$1 out=$IMAGES/pause.tar
  [ -s "$out" ] && return 0
  local pc
  for pc in "$src"/build/pause/linux/pause.c "$src"/build/pause/pause.c ""; do [ -f "$pc" ] && break; done
  [ -n "$pc" ] || die "pause.c not found in $src/build/pause"
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$tmp/root" "$IMAGES"
  gcc -static -Os -Wall -Werror -DVERSION=v3.2-ttd -o "$tmp/root/pause" "$pc"
  strip "$tmp/root/pause"
  python3 "$HERE/mkimage.py" --out "$tmp/oci" --tag 3.2 --entrypoint /pause \
      --add "$tmp/root/pause:/pause"
  skopeo copy --quiet "oci:$tmp/oci:3.2" "docker-archive:$out.tmp:$PAUSE_IMAGE"
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
  log "pause image: $out"
}

cmd_build() {
  local t0=$SECONDS
  ensure_packages
  local have_all=1
  for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || have_all=0; done
  if [ $have_all = 1 ] && [ -s "$IMAGES/pause.tar" ]; then
    log "build: cached binaries in $BIN (nothing to do)"; return 0
  fi
  local src; src=$(fetch_source)
  if [ $have_all = 0 ]; then
    log "building ${BINARIES[*]} from $src (about 7-10 min on 2 cores)"
    mkdir -p "$BIN" "$CACHE_ROOT/gocache"
    local what=""
    for b in "${BINARIES[@]}"; do what+="cmd/$b "; done
    (
      cd "$src"
      export GOCACHE=$CACHE_ROOT/gocache GOFLAGS=-mod=vendor GO111MODULE=on GOPROXY=off
      export CGO_ENABLED=0
      export KUBE_GIT_VERSION=$K8S_VERSION KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian-source
      export KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
      make WHAT="${what% }" >&2
    )
    local outdir="$src/_output/local/go/bin"
    [ -d "$outdir" ] || outdir=$(dirname "$(find "$src/_output" -type f -name kubelet | head -1)")
    for b in "${BINARIES[@]}"; do install -m 0755 "$outdir/$b" "$BIN/$b"; done
    rm -rf "$CACHE_ROOT/gocache" "$src/_output"
  fi
  build_pause "$src"
  { "$BIN/kubectl" version --client --short 2>/dev/null || "$BIN/kubectl" version --client; } >&2
  log "build done in $((SECONDS - t0))s; cache: $(du -sh "$CACHE" | cut -f1) ($CACHE), source: $(du -sh "$SRC_ROOT" | cut -f1)"
}


# ------------------------------------------------------------ process helpers
pid_alive() {  # NAME -> 0 if pidfile points at a live process of ours
  local f=$PIDS/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f"); [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  # guard against pid reuse: the process must still be the binary we started
  grep -qa -- "$(cat "$PIDS/$1.exe" 2>/dev/null || echo __none__)" "/proc/$pid/cmdline" 2>/dev/null
}

start_daemon() {  # NAME CMD...   (idempotent)
  local name=$1; shift
  if pid_alive "$name"; then log "$name: already running (pid $(cat "$PIDS/$name.pid"))"; return 0; fi
  mkdir -p "$PIDS" "$LOGS"
  basename "$1" > "$PIDS/$name.exe"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! > "$PIDS/$name.pid"
  log "$name: started pid $! (log $LOGS/$name.log)"
}

stop_daemon() {  # NAME [timeout]
  local name=$1 t=${2:-20} pid
  pid_alive "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
  pid=$(cat "$PIDS/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((t * 5))); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then log "$name: SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$PIDS/$name.pid"
  log "$name: stopped"
}

wait_for() {  # DESC TIMEOUT_S CMD...
  local desc=$1 t=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${t}s waiting for $desc"
    sleep 1
  done
  log "ready: $desc"
}

kc() { "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }
ctrd() { ctr --address "$CTRD_SOCK" "$@"; }

# ------------------------------------------------------------------- config
gen_pki() {
  local p=$STATE/pki
  mkdir -p "$p"; chmod 700 "$p"
  if [ ! -s "$p/ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" \
      -days 3650 -subj "/CN=ttd-kubernetes-ca" 2>/dev/null
  fi
  if [ ! -s "$p/apiserver.crt" ]; then
    openssl req -newkey rsa:2048 -nodes -keyout "$p/apiserver.key" -out "$p/apiserver.csr" \
      -subj "/CN=kube-apiserver" 2>/dev/null
    cat > "$p/apiserver.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$GATEWAY,IP:$KUBERNETES_SVC_IP
EOF
    openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -out "$p/apiserver.crt" -days 3650 -extfile "$p/apiserver.ext" 2>/dev/null
  fi
  if [ ! -s "$p/sa.key" ]; then
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  fi
  if [ ! -s "$STATE/tokens.csv" ]; then
    local a k c s
    a=$(openssl rand -hex 16); k=$(openssl rand -hex 16); c=$(openssl rand -hex 16); s=$(openssl rand -hex 16)
    umask 077
    cat > "$STATE/tokens.csv" <<EOF
$a,admin,admin,"system:masters"
$k,system:node:localhost,kubelet,"system:nodes"
$c,system:kube-controller-manager,kcm
$s,system:kube-scheduler,scheduler
EOF
    umask 022
  fi
}

write_kubeconfig() {  # FILE USER TOKEN
  local ca; ca=$(base64 -w0 < "$STATE/pki/ca.crt")
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ttd
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: $2
  user:
    token: $3
contexts:
- name: ttd
  context: {cluster: ttd, user: $2, namespace: default}
current-context: ttd
EOF
  chmod 600 "$1"
}

gen_configs() {
  mkdir -p "$STATE"/{kubelet,containerd/root,containerd/certs.d,cni/net.d,cni/ipam,registry,etcd} \
           "$TTD_K8S_REGISTRY_DATA" "$RUN/containerd/state" "$PIDS" "$LOGS"
  chmod 700 "$STATE/etcd"
  gen_pki
  tok() { awk -F, -v u="$1" '$3==u{print $1}' "$STATE/tokens.csv"; }
  write_kubeconfig "$STATE/kubeconfig" admin "$(tok admin)"
  write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet "$(tok kubelet)"
  write_kubeconfig "$STATE/kcm.kubeconfig" kcm "$(tok kcm)"
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler "$(tok scheduler)"

  # containerd: private instance (own config, root, state, socket)
  cat > "$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$RUN/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$REGISTRY_ADDR/ttd/pause:3.2"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/containerd/certs.d"
EOF
  # registry hosts: the local registry over plain http; the usual public
  # registries are redirected to it too, so nothing ever leaves the machine.
  local h
  for h in "$REGISTRY_ADDR" "localhost:${REGISTRY_ADDR##*:}" docker.io registry.k8s.io k8s.gcr.io gcr.io quay.io ghcr.io; do
    mkdir -p "$STATE/containerd/certs.d/$h"
    cat > "$STATE/containerd/certs.d/$h/hosts.toml" <<EOF
server = "http://$REGISTRY_ADDR"

[host."http://$REGISTRY_ADDR"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
EOF
  done

  # CNI: bridge (created by us, see net_up) + host-local IPAM; no masquerade,
  # no portmap, isGateway=false so the plugin never touches ip_forward.
  cat > "$STATE/cni/net.d/10-ttd.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "ttd-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "${GATEWAY%.*}.10", "gateway": "$GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF

  # pods never get the host's (external) resolver; the gateway has no DNS server
  echo "nameserver $GATEWAY" > "$STATE/kubelet/resolv.conf"
  cat > "$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
failSwapOn: false
oomScoreAdj: 0
makeIPTablesUtilChains: false
clusterDomain: cluster.local
clusterDNS: ["$GATEWAY"]
resolvConf: $STATE/kubelet/resolv.conf
volumePluginDir: $STATE/kubelet/volume-plugins
evictionHard: {"memory.available": "200Mi", "nodefs.available": "3%", "imagefs.available": "3%"}
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
serializeImagePulls: false
maxPods: 60
EOF

  cat > "$STATE/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: $TTD_K8S_REGISTRY_DATA}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
EOF
}

# ------------------------------------------------------------------ network
ipt_hook() {  # TABLE PARENT RULE...   insert once
  local t=$1 parent=$2; shift 2
  iptables -w -t "$t" -C "$parent" "$@" 2>/dev/null || iptables -w -t "$t" -I "$parent" 1 "$@"
}

net_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    log "created bridge $BRIDGE"
  fi
  [[ "$(ip -4 -o addr show dev "$BRIDGE")" == *"inet $GATEWAY/"* ]] || ip addr add "$GATEWAY/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # filter: pods may talk to each other and to this host, never forwarded elsewhere;
  # the API server (bound to 0.0.0.0) is only reachable from lo and the bridge.
  iptables -w -t filter -N "$FW_CHAIN" 2>/dev/null || iptables -w -t filter -F "$FW_CHAIN"
  iptables -w -t filter -A "$FW_CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j RETURN
  iptables -w -t filter -A "$FW_CHAIN" -i "$BRIDGE" -j DROP
  iptables -w -t filter -A "$FW_CHAIN" -o "$BRIDGE" -j DROP
  iptables -w -t filter -N "$FW_CHAIN-IN" 2>/dev/null || iptables -w -t filter -F "$FW_CHAIN-IN"
  iptables -w -t filter -A "$FW_CHAIN-IN" -i lo -j RETURN
  iptables -w -t filter -A "$FW_CHAIN-IN" -i "$BRIDGE" -j RETURN
  iptables -w -t filter -A "$FW_CHAIN-IN" -p tcp --dport "$APISERVER_PORT" -j DROP
  ipt_hook filter FORWARD -j "$FW_CHAIN"
  ipt_hook filter INPUT -j "$FW_CHAIN-IN"
  # nat: in-cluster clients (KUBERNETES_SERVICE_HOST=10.96.0.1:443) reach the
  # API server without kube-proxy.
  iptables -w -t nat -N "$NAT_CHAIN" 2>/dev/null || iptables -w -t nat -F "$NAT_CHAIN"
  iptables -w -t nat -A "$NAT_CHAIN" -s "$POD_CIDR" -d "$KUBERNETES_SVC_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$GATEWAY:$APISERVER_PORT"
  ipt_hook nat PREROUTING -j "$NAT_CHAIN"
}

net_down() {
  local c table parent chain
  for c in "filter FORWARD $FW_CHAIN" "filter INPUT $FW_CHAIN-IN" "nat PREROUTING $NAT_CHAIN"; do
    read -r table parent chain <<< "$c"
    while iptables -w -t "$table" -D "$parent" -j "$chain" 2>/dev/null; do :; done
    iptables -w -t "$table" -F "$chain" 2>/dev/null || true
    iptables -w -t "$table" -X "$chain" 2>/dev/null || true
  done
  # leftover pod veths (normally gone with their netns) and the bridge
  local v
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; log "deleted bridge $BRIDGE"; fi
}

# --------------------------------------------------------------------- up
push_oci() {  # OCI_DIR:TAG  DEST_REF
  skopeo copy --quiet --dest-tls-verify=false "oci:$1" "docker://$2"
}

ensure_pause_image() {
  local ref=$REGISTRY_ADDR/ttd/pause:3.2 tmp
  if ! [[ $'\n'"$(ctrd -n k8s.io images ls -q)"$'\n' == *$'\n'"$ref"$'\n'* ]]; then
    tmp=$(mktemp -d)
    # re-tag the cached archive under the local-registry name and import it
    skopeo copy --quiet "docker-archive:$IMAGES/pause.tar" "docker-archive:$tmp/p.tar:$ref"
    ctrd -n k8s.io images import "$tmp/p.tar" >/dev/null
    rm -rf "$tmp"
    log "imported $ref into containerd"
  fi
  # also in the registry, so a GC'd pause image is re-pulled locally
  if ! curl -fs "http://$REGISTRY_ADDR/v2/ttd/pause/manifests/3.2" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' >/dev/null; then
    skopeo copy --quiet --dest-tls-verify=false "docker-archive:$IMAGES/pause.tar" "docker://$ref"
    log "pushed $ref"
  fi
}

node_ready() {
  [ "$(kc get node localhost -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# Host paths that kubelet 1.20 / containerd shims / libcni create regardless of
# our config. Remember which did not exist before, so `down` can remove them.
HOST_PATHS=(/var/lib/kubelet /usr/libexec/kubernetes /var/lib/cni /run/containerd)
record_host_paths() {
  local p
  touch "$STATE/created-host-paths"
  for p in "${HOST_PATHS[@]}"; do
    [ -e "$p" ] || grep -qxF "$p" "$STATE/created-host-paths" || echo "$p" >> "$STATE/created-host-paths"
  done
}

clean_host_paths() {
  local f id
  # libcni result cache: only our network's entries (+ the loopback entries of our sandboxes)
  for f in /var/lib/cni/results/ttd-pods-*-eth0; do
    [ -e "$f" ] || continue
    id=${f#/var/lib/cni/results/ttd-pods-}; id=${id%-eth0}
    rm -f "$f" "/var/lib/cni/results/cni-loopback-$id-lo"
  done
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/DEPRECATION
  [ -f "$STATE/created-host-paths" ] || return 0
  local p
  while read -r p; do
    [ -d "$p" ] || continue
    # remove only empty directories (never anything someone else put there)
    find "$p" -depth -type d -empty -delete 2>/dev/null || true
  done < "$STATE/created-host-paths"
}

cmd_up() {
  local t0=$SECONDS b
  for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || { log "binaries missing: running build"; cmd_build; break; }; done
  [ -s "$IMAGES/pause.tar" ] || cmd_build
  ensure_packages
  gen_configs
  record_host_paths
  net_up

  start_daemon etcd /usr/bin/etcd --name ttd --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "ttd=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 2147483648 --auto-compaction-retention 1h
  start_daemon containerd /usr/bin/containerd --config "$STATE/containerd/config.toml"
  start_daemon registry /usr/bin/docker-registry serve "$STATE/registry/config.yml"
  wait_for etcd 60 curl -fs "http://127.0.0.1:$ETCD_PORT/health"
  wait_for containerd 60 ctrd version
  wait_for registry 60 curl -fs "http://$REGISTRY_ADDR/v2/"
  ensure_pause_image

  start_daemon kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$GATEWAY" \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --client-ca-file "$STATE/pki/ca.crt" --token-auth-file "$STATE/tokens.csv" \
    --anonymous-auth=false --authorization-mode AlwaysAllow --allow-privileged=true \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$STATE/pki/sa.pub" \
    --service-account-signing-key-file "$STATE/pki/sa.key" \
    --kubelet-preferred-address-types Hostname \
    --cert-dir "$STATE/pki/apiserver-auto" --profiling=false --v 1
  wait_for kube-apiserver 120 kc get --raw /readyz

  start_daemon kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kcm.kubeconfig" --bind-address 127.0.0.1 --port 0 \
    --cert-dir "$STATE/pki/kcm-auto" --leader-elect=false \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    --use-service-account-credentials=false --profiling=false --v 1
  start_daemon kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" --bind-address 127.0.0.1 --port 0 \
    --cert-dir "$STATE/pki/scheduler-auto" --leader-elect=false --profiling=false --v 1
  start_daemon kubelet "$BIN/kubelet" \
    --config "$STATE/kubelet/config.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$CTRD_SOCK" \
    --image-service-endpoint "unix://$CTRD_SOCK" --runtime-request-timeout 5m \
    --pod-infra-container-image "$REGISTRY_ADDR/ttd/pause:3.2" \
    --hostname-override localhost --node-ip "$GATEWAY" \
    --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" --v 1

  wait_for "node localhost Ready" 180 node_ready
  wait_for "default service account" 120 kc -n default get serviceaccount default
  wait_for "default service account token" 120 \
    bash -c "[ -n \"\$('$BIN/kubectl' --kubeconfig '$STATE/kubeconfig' -n default get sa default -o jsonpath='{.secrets[0].name}')\" ]"
  log "cluster up in $((SECONDS - t0))s.  export KUBECONFIG=$STATE/kubeconfig; kubectl: $BIN/kubectl"
}

# -------------------------------------------------------------------- down
our_shims() {  # pids of containerd shims started by OUR containerd
  local d
  for d in /proc/[0-9]*; do
    [[ "$(tr '\0' ' ' 2>/dev/null < "$d/cmdline" || true)" == *containerd-shim*"-address $CTRD_SOCK "* ]] && echo "${d#/proc/}"
  done
  return 0
}

descendants() {  # PID -> PID and all its descendants
  local p=$1 c children
  echo "$p"
  # each task's children file holds its children's pids, separated by spaces
  children=$(cat /proc/"$p"/task/*/children 2>/dev/null || true)
  for c in $children; do descendants "$c"; done
}

remove_containers() {
  pid_alive containerd || return 0
  local ns=k8s.io ids id
  ids=$(ctrd -n $ns tasks ls -q 2>/dev/null || true)
  for id in $ids; do ctrd -n $ns tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $ids; do
    for _ in $(seq 50); do
      [[ "$(ctrd -n $ns tasks ls 2>/dev/null | awk -v i="$id" '$1==i{print $3}')" == RUNNING ]] || break
      sleep 0.2
    done
    ctrd -n $ns tasks rm -f "$id" >/dev/null 2>&1 || true
  done
  local containers=()
  mapfile -t containers < <(ctrd -n $ns containers ls -q 2>/dev/null || true)
  if ((${#containers[@]})); then ctrd -n $ns containers rm "${containers[@]}" >/dev/null 2>&1 || true; fi
  log "removed ${#containers[@]} containers/sandboxes"
}

unmount_under() {  # DIR...
  local d m
  for d in "$@"; do
    [ -e "$d" ] || continue
    d=$(readlink -f "$d")
    findmnt -rn -o TARGET | awk -v d="$d" 'index($0, d"/")==1 || $0==d' | sort -r | while read -r m; do
      m=$(printf '%b' "$m")   # findmnt escapes spaces as \x20
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "WARN: cannot unmount $m"
    done
  done
}

remove_kube_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # kubelet-created cgroups for itself/runtime (only when it manages them)
  return 0
}

cmd_down() {
  local t0=$SECONDS p
  stop_daemon kubelet 20
  remove_containers
  for p in $(our_shims); do
    for q in $(descendants "$p" | tac); do kill -KILL "$q" 2>/dev/null || true; done
  done
  stop_daemon kube-scheduler 10
  stop_daemon kube-controller-manager 10
  stop_daemon kube-apiserver 20
  stop_daemon registry 10
  stop_daemon containerd 20
  stop_daemon etcd 20
  for p in $(our_shims); do kill -KILL "$p" 2>/dev/null || true; done
  unmount_under "$RUN" "$STATE"
  net_down
  rm -rf --one-file-system "$STATE/cni/ipam"/* "$STATE/kubelet/root/pods" 2>/dev/null || true
  # kubelet writes pod logs to fixed host paths
  rm -rf /var/log/pods/* 2>/dev/null || true
  find /var/log/containers -maxdepth 1 -type l -delete 2>/dev/null || true
  remove_kube_cgroups
  clean_host_paths
  rm -rf "$RUN"
  log "down in $((SECONDS - t0))s"
}

cmd_purge() {
  cmd_down
  rm -rf "$STATE"
  log "purged $STATE (cache $CACHE kept)"
}

cmd_status() {
  local n rc=0
  for n in etcd containerd registry kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    if pid_alive "$n"; then printf '%-24s running  pid %s\n' "$n" "$(cat "$PIDS/$n.pid")"
    else printf '%-24s stopped\n' "$n"; rc=1; fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then echo "bridge $BRIDGE: $(ip -br addr show "$BRIDGE" | awk '{print $2, $3}')"
  else echo "bridge $BRIDGE: absent"; fi
  if pid_alive kube-apiserver; then
    echo "KUBECONFIG=$STATE/kubeconfig  kubectl=$BIN/kubectl"
    kc get nodes -o wide 2>&1 || true
    kc get pods -A -o wide 2>&1 || true
  fi
  return $rc
}

cmd_env() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export PATH=$BIN:\$PATH"
}

# ------------------------------------------------------------------ dispatch
case "${1:-}" in
  build)  cmd_build ;;
  up)     cmd_up ;;
  down)   cmd_down ;;
  purge)  cmd_purge ;;
  status) cmd_status ;;
  env)    cmd_env ;;
  kubectl) shift; exec "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@" ;;
  *) echo "usage: $0 {build|up|down|purge|status|env|kubectl ARGS...}" >&2; exit 2 ;;
esac
