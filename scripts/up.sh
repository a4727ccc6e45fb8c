#!/usr/bin/env bash
# The embedded default: mvirt as a single-node cluster on this machine, booting one VM.
#
# Starts mvirt-log, mvirt-zfs (on a file-backed zfs-fuse pool in the data dir), mvirt-ebpf,
# mvirt-vmm, mvirt-api and mvirt-node; imports a small bootable template built from Debian
# packages (Debian kernel + busybox initramfs that applies the cloud-init NoCloud seed and runs
# DHCP); creates a network and a VM; waits until the VM runs and prints its address and how to
# reach its console. A second run reuses the running daemons and the existing resources.
# The local daemons listen on unix sockets in $MVIRT_DEV_DATA/run (mode 0600, root only), not on
# TCP ports; mvirt-api and the agent reach them there. mvirt-api serves TLS (REST, dashboard,
# NodeService, Raft) with certificates of the cluster CA it creates at bootstrap
# ($MVIRT_DEV_DATA/api/tls/ca.pem); the agent and every curl here trust exactly that CA, and the
# summary at the end prints its fingerprint and how to trust it (mvirt login, curl, a browser).
#
# Environment: MVIRT_DEV_DATA (default /var/lib/mvirt-dev), MVIRT_DEV_API_PORT (default 8080).
# Stop the daemons with: bash scripts/up.sh stop (VMs keep running and are adopted again);
# remove everything with: bash scripts/up.sh purge
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=${MVIRT_DEV_DATA:-/var/lib/mvirt-dev}
API_PORT=${MVIRT_DEV_API_PORT:-8080}
API=https://127.0.0.1:$API_PORT
CA=$DATA/api/tls/ca.pem
POOL=mvirtdev
RUN=$DATA/run
# The local daemons listen on unix sockets here (mode 0600, root only), never on TCP.
LOG_SOCK=$RUN/log.sock
# MVIRT_DEV_PROFILE=dev uses a debug build (quicker to build, slower to run).
PROFILE=${MVIRT_DEV_PROFILE:-release}
if [ "$PROFILE" = dev ]; then BIN=$ROOT/target/debug; else BIN=$ROOT/target/$PROFILE; fi
DAEMONS=(mvirt-node mvirt-api mvirt-vmm mvirt-ebpf mvirt-zfs mvirt-log)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'up.sh: %s\n' "$*" >&2; exit 1; }

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

stop_all() {
  for d in "${DAEMONS[@]}"; do
    if running "$d"; then
      say "stopping $d"
      kill -TERM "$(cat "$RUN/$d.pid")" || true
      for _ in $(seq 1 50); do running "$d" || break; sleep 0.1; done
    fi
    rm -f "$RUN/$d.pid"
  done
}

if [ "${1:-}" = "stop" ]; then
  stop_all
  exit 0
fi
# purge: stop everything and remove every trace (guests, TAPs, pinned eBPF objects, the pool).
if [ "${1:-}" = "purge" ]; then
  stop_all
  pkill -f "qemu-system-x86_64.*$DATA/vmm" || true
  for tap in $(ip -o link show type tun 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^mv[0-9a-f]{12}$'); do
    ip link del "$tap" || true
  done
  rm -rf /sys/fs/bpf/mvirt-ebpf
  if zpool list -H "$POOL" >/dev/null 2>&1; then
    # zfs-fuse says "busy" for a moment after the daemons let go of the datasets.
    for _ in $(seq 1 20); do
      zpool destroy -f "$POOL" 2>/dev/null && break
      sleep 0.5
    done
    zpool list -H "$POOL" >/dev/null 2>&1 && die "cannot destroy pool $POOL; $DATA kept"
  fi
  rm -rf "$DATA"
  say "purged $DATA"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (TAP devices, eBPF and zfs-fuse need it)"

say "installing prerequisites"
bash scripts/setup.sh

say "building mvirt ($PROFILE)"
cargo build --profile "$PROFILE" --bins -p mvirt-log -p mvirt-zfs -p mvirt-ebpf -p mvirt-vmm -p mvirt-api \
  -p mvirt-node -p mvirt-cli -p mvirt-testsupport
say "building the web UI" && bash scripts/build-ui.sh

mkdir -p "$DATA"/{log,zfs,ebpf,vmm,api,node,images} "$RUN"

# start NAME ARGS...: starts a daemon in the background unless it already runs.
start() {
  local name=$1; shift
  if running "$name"; then
    echo "    $name already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  nohup "$@" >>"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "    $name started (pid $!, log $RUN/$name.log)"
}

# wait_for WHAT COMMAND...: retries COMMAND for up to 60 s.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out waiting for $what (see $RUN/*.log)"
}

say "storage: zfs-fuse pool $POOL in $DATA/zfs"
if ! pgrep -x zfs-fuse >/dev/null; then
  zfs-fuse -p "$RUN/zfs-fuse.pid" --no-kstat-mount
  wait_for "zfs-fuse" zpool list
fi
if ! zpool list -H "$POOL" >/dev/null 2>&1; then
  if [ -f "$DATA/zfs/pool.img" ]; then
    zpool import -d "$DATA/zfs" "$POOL"
  else
    truncate -s 20G "$DATA/zfs/pool.img"
    zpool create -m "$DATA/zfs/mnt" "$POOL" "$DATA/zfs/pool.img"
  fi
fi

say "template image (Debian kernel + busybox initramfs)"
"$BIN/mvirt-dev-image" "$DATA/images" >/dev/null

say "starting daemons"
start mvirt-log "$BIN/mvirt-log" --data-dir "$DATA/log" --listen "$LOG_SOCK"
start mvirt-zfs "$BIN/mvirt-zfs" --pool "$POOL" --data-dir "$DATA/zfs/meta" --import-dir "$DATA/images" \
  --listen "$RUN/zfs.sock" --log-endpoint "unix:$LOG_SOCK"
start mvirt-ebpf "$BIN/mvirt-ebpf" --data-dir "$DATA/ebpf" --listen "$RUN/ebpf.sock" --log-endpoint "unix:$LOG_SOCK"
start mvirt-vmm "$BIN/mvirt-vmm" --data-dir "$DATA/vmm" --allowed-dir "$DATA" \
  --listen "$RUN/vmm.sock" --log-endpoint "unix:$LOG_SOCK" \
  --qemu-accel "${MVIRT_DEV_QEMU_ACCEL:-tcg}"
start mvirt-api "$BIN/mvirt-api" --data-dir "$DATA/api" --listen "127.0.0.1:$API_PORT" \
  --grpc-listen 127.0.0.1:50056 --raft-listen 127.0.0.1:6001 --advertise-host 127.0.0.1 --ui-dir "$ROOT/mvirt-ui/dist" \
  --log-endpoint "unix:$LOG_SOCK"
wait_for "the cluster CA" test -s "$CA"
wait_for "mvirt-api" curl -sf --cacert "$CA" "$API/v1/health"
wait_for "the admin token" test -s "$DATA/api/admin.token"
# sha256: + hex of SHA-256 over the CA's DER: what mvirt-api logs and `mvirt login` shows.
FINGERPRINT="sha256:$(openssl x509 -in "$CA" -outform der | sha256sum | cut -d' ' -f1)"
start mvirt-node "$BIN/mvirt-node" --data-dir "$DATA/node" --api https://127.0.0.1:50056 \
  --ca-file "$CA" --token-file "$DATA/api/admin.token" \
  --vmm "unix:$RUN/vmm.sock" --zfs "unix:$RUN/zfs.sock" --ebpf "unix:$RUN/ebpf.sock" --log "unix:$LOG_SOCK" \
  --name "$(hostname | tr 'A-Z_.' 'a-z--' | cut -c1-63)" \
  --console-listen 127.0.0.1:50057

TOKEN=$(cat "$DATA/api/admin.token")
api() { # api METHOD PATH [JSON]
  if [ $# -ge 3 ]; then
    curl -sS -f --cacert "$CA" -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data "$3" "$API$2"
  else
    curl -sS -f --cacert "$CA" -X "$1" -H "Authorization: Bearer $TOKEN" "$API$2"
  fi
}
# lookup KIND NAME: prints the id of the named resource in the default project, if any.
lookup() { api GET "/v1/$1?project=default" | jq -r --arg n "$2" '.items[] | select(.name == $n) | .id' | head -n 1; }

say "waiting for this node to register"
wait_for "the node" sh -c "curl -sf --cacert '$CA' -H 'Authorization: Bearer $TOKEN' $API/v1/nodes | jq -e '.items | length > 0'"

say "network demo-net (10.42.0.0/24)"
NET=$(lookup networks demo-net)
if [ -z "$NET" ]; then
  NET=$(api POST /v1/networks '{"name":"demo-net","spec":{"ipv4_prefix":"10.42.0.0/24","dns_servers":["10.42.0.1"]}}' | jq -r .id)
fi

say "template tiny (imported from $DATA/images)"
TPL=$(lookup templates tiny)
if [ -z "$TPL" ]; then
  TPL=$(api POST /v1/templates "$(jq -n --arg d "$DATA/images" '{name:"tiny",spec:{source_url:("file://"+$d+"/disk.raw"),format:"raw",kernel_url:("file://"+$d+"/vmlinuz"),initramfs_url:("file://"+$d+"/initramfs.img"),cmdline:"console=ttyS0 tsc_early_khz=2100000 panic=-1"}}')" | jq -r .id)
fi

say "VM demo"
VM=$(lookup vms demo)
if [ -z "$VM" ]; then
  KEY=""
  [ -f "$HOME/.ssh/id_ed25519.pub" ] && KEY=$(cat "$HOME/.ssh/id_ed25519.pub")
  VM=$(api POST /v1/vms "$(jq -n --arg net "$NET" --arg tpl "$TPL" --arg key "$KEY" '{name:"demo",spec:{vcpus:1,memory_bytes:268435456,hostname:"demo",root_volume:{template_id:$tpl,size_bytes:67108864},network_interfaces:[{network_id:$net}],ssh_authorized_keys:(if $key == "" then [] else [$key] end),user_data:"#cloud-config\n"}}')" | jq -r .id)
fi

say "waiting for the VM to run"
for _ in $(seq 1 600); do
  PHASE=$(api GET "/v1/vms/$VM" | jq -r '.status.phase // ""')
  [ "$PHASE" = running ] && break
  [ "$PHASE" = failed ] && die "VM failed: $(api GET "/v1/vms/$VM" | jq -r .status.message)"
  sleep 0.5
done
[ "$PHASE" = running ] || die "the VM did not reach running (phase '$PHASE'); see $RUN/*.log"
api GET "/v1/vms/$VM" | jq '{id, name, node_id, phase: .status.phase, addresses: .status.ipv4_addresses}'

cat <<EOT

mvirt is running (data in $DATA, logs and the daemons' sockets in $RUN).
  API:      $API   (token: $DATA/api/admin.token)
  TLS:      cluster CA $CA
            fingerprint $FINGERPRINT
  Trust it: $BIN/mvirt login $API --token-file $DATA/api/admin.token --accept-fingerprint $FINGERPRINT
            curl --cacert $CA -H "Authorization: Bearer \$(cat $DATA/api/admin.token)" $API/v1/vms
            browser: import $CA as a certificate authority (Chromium: Settings > Privacy and
            security > Security > Manage certificates > Authorities > Import; or
            certutil -d sql:\$HOME/.pki/nssdb -A -t C,, -n mvirt-dev -i $CA)
  Dashboard: $API/   (log in with the token in $DATA/api/admin.token)
  VM demo:  $VM
  Console:  $BIN/mvirt vm console demo   (after the mvirt login above)
            (or SSL_CERT_FILE=$CA websocat -H "Authorization: Bearer \$(cat $DATA/api/admin.token)" wss://127.0.0.1:$API_PORT/v1/vms/$VM/console)
  Stop:     bash scripts/up.sh stop
EOT
