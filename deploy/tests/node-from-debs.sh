#!/usr/bin/env bash
# Steps 4-6 of scripts/test-deploy.sh, run by it inside a mount and network namespace of its own
# (unshare --mount --net --propagation slave): installs the .deb files from WORK/debs into a
# fresh root, verifies the units, starts every daemon as its unit says and boots a VM through
# REST; then restores a control-plane backup. Arguments: REPO WORK POOL START BIN POD_VERSION
# (set up by scripts/test-deploy.sh, which also cleans up).
set -euo pipefail
REPO=$1 WORK=$2 POOL=$3 START=$4 BIN=$5 POD_VERSION=$6
R=$WORK/root
UNITRUN="python3 $REPO/deploy/tests/unitrun.py"
say() { printf '== test-deploy: %s (%ss)\n' "$*" "$(($(date +%s) - START))"; }
die() { printf 'test-deploy: FAILED: %s\n' "$*" >&2; exit 1; }
ip link set lo up

say "a fresh root: an overlay of this machine's / with a throw-away upper layer"
mkdir -p "$WORK/ovl" "$R"
mount -t tmpfs tmpfs "$WORK/ovl"
mkdir -p "$WORK/ovl/upper" "$WORK/ovl/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$WORK/ovl/upper,workdir=$WORK/ovl/work" "$R"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"              # sysfs of this network namespace (its TAPs)
mount -t bpf bpf "$R/sys/fs/bpf"          # a bpffs of our own: pins vanish with the namespace
mount -t tmpfs tmpfs "$R/run"              # /run of a freshly booted host
mkdir -p "$R/run/zfs" "$R/tmp/debs"
mount --bind /run/zfs "$R/run/zfs"         # zfs-fuse's socket
mkdir -p "$R$WORK/shared"
mount --rbind "$WORK/shared" "$R$WORK/shared"
[ ! -e "$R/usr/bin/mvirt-vmm" ] && [ ! -e "$R/etc/mvirt" ] || die "the root is not fresh: mvirt is installed on this machine"

say "dpkg -i every package into the root"
cp "$WORK"/debs/*.deb "$R/tmp/debs/"
chroot "$R" sh -c 'dpkg -i /tmp/debs/*.deb' >"$WORK/logs/dpkg.log" 2>&1 || { cat "$WORK/logs/dpkg.log"; die "dpkg -i failed"; }
for pkg in mvirt-common mvirt-log mvirt-zfs mvirt-ebpf mvirt-vmm mvirt-api mvirt-node mvirt-cli mvirt-pod-artefacts mvirt-vhost-device-vsock mvirt-hypervisor mvirt-controlplane; do
  [ "$(chroot "$R" dpkg-query -W -f '${Status}' "$pkg")" = "install ok installed" ] || die "$pkg is not installed"
done
chroot "$R" getent group mvirt >/dev/null || die "no mvirt group"
[ "$(chroot "$R" id -gn mvirt)" = mvirt ] || die "the mvirt user is not in the mvirt group"
[ "$(chroot "$R" stat -c "%a %G" /run/mvirt)" = "1770 mvirt" ] || die "/run/mvirt is not 1770 root:mvirt"
[ -d "$R/var/lib/mvirt/images" ] || die "no /var/lib/mvirt/images"
[ "$(stat -c %a "$R/etc/mvirt/api.env")" = 600 ] || die "/etc/mvirt/api.env (may hold a join token) is not 0600"
grep -qx 'KillMode=process' "$R/lib/systemd/system/mvirt-vmm.service" || die "mvirt-vmm.service lacks KillMode=process"
chroot "$R" mvirt --help >/dev/null || die "the mvirt CLI does not run"
# The QEMU pods' vsock backend where mvirt-vmm's default finds it (on systemd's PATH), runnable.
chroot "$R" /usr/bin/vhost-device-vsock --version >/dev/null || die "the packaged vhost-device-vsock does not run"
# The pod artefacts where the packaged mvirt-vmm looks for them, every file as the manifest says.
PODS=$(sed -n 's/^MVIRT_VMM_POD_ARTEFACTS=//p' "$R/etc/mvirt/vmm.env")
[ "$PODS" = /usr/lib/mvirt/pod-artefacts ] || die "vmm.env points mvirt-vmm at pod artefacts in '$PODS'"
[ "$("$BIN/mvirt-pod-image" verify --out "$R$PODS")" = "$POD_VERSION" ] || die "the installed pod artefacts are not the ones built"

say "systemd-analyze verify"
chroot "$R" sh -c 'systemd-analyze verify /lib/systemd/system/mvirt-*.service' >"$WORK/logs/verify.log" 2>&1 ||
  { cat "$WORK/logs/verify.log"; die "systemd-analyze verify failed"; }
# Units this machine does not have (zfs.target: kernel ZFS) are fine; anything about ours is not.
if grep -E 'mvirt-[a-z]+\.service:' "$WORK/logs/verify.log"; then die "systemd-analyze verify complains about a unit"; fi

say "the kernel modules and sysctls the packages install (modules-load.d, sysctl.d)"
# Exactly what services.toml declares, in the files systemd reads at boot, and at least what the
# daemons need (deploy/tests/check_flags.py NEEDED_MODULES/NEEDED_SYSCTL say why).
python3 - "$R" "$REPO/deploy/services.toml" <<'PY' || die "the installed modules-load.d/sysctl.d files are wrong"
import sys, tomllib
from pathlib import Path
root, toml = Path(sys.argv[1]), sys.argv[2]
services = tomllib.load(open(toml, "rb"))["services"]
needed_modules = {"mvirt-ebpf": {"tun", "vxlan", "nf_tables"}, "mvirt-vmm": {"tun", "vhost_net", "vhost_vsock"}}
needed_sysctl = {"mvirt-ebpf": {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}}
def lines(path):
    return [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.lstrip().startswith(("#", ";"))]
bad = []
for svc in services.values():
    pkg = svc["package"]
    conf = root / f"usr/lib/modules-load.d/{pkg}.conf"
    if svc.get("kernel_modules"):
        got = lines(conf) if conf.is_file() else None
        if got != svc["kernel_modules"]:
            bad.append(f"{conf}: {got}, services.toml says {svc['kernel_modules']}")
        if (root / f"etc/modules-load.d/{pkg}.conf").exists():
            bad.append(f"/etc/modules-load.d/{pkg}.conf shadows the package's file")
    elif conf.exists():
        bad.append(f"{conf} installed, but services.toml declares no module for {pkg}")
    if not needed_modules.get(pkg, set()) <= set(svc.get("kernel_modules", [])):
        bad.append(f"{pkg}: loads {svc.get('kernel_modules')}, needs {sorted(needed_modules[pkg])}")
    conf = root / f"usr/lib/sysctl.d/60-{pkg}.conf"
    if svc.get("sysctl"):
        got = dict(tuple(p.strip() for p in l.split("=", 1)) for l in lines(conf)) if conf.is_file() else None
        want = {k: str(v) for k, v in svc["sysctl"].items()}
        if got != want:
            bad.append(f"{conf}: {got}, services.toml says {want}")
    elif conf.exists():
        bad.append(f"{conf} installed, but services.toml declares no sysctl for {pkg}")
    for k, v in needed_sysctl.get(pkg, {}).items():
        if str(svc.get("sysctl", {}).get(k)) != v:
            bad.append(f"{pkg}: does not set {k} = {v}")
    print(f"   {pkg}: modules {' '.join(svc.get('kernel_modules', [])) or '-'}; "
          f"sysctl {' '.join(f'{k}={v}' for k, v in svc.get('sysctl', {}).items()) or '-'}")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
PY
# systemd-sysctl's own merged view (later files and /etc override earlier ones): forwarding on.
chroot "$R" systemd-analyze cat-config sysctl.d >"$WORK/logs/sysctl.log" 2>&1 || { cat "$WORK/logs/sysctl.log"; die "systemd-analyze cat-config sysctl.d failed"; }
grep -qx '# /usr/lib/sysctl.d/60-mvirt-ebpf.conf' "$WORK/logs/sysctl.log" || die "systemd-sysctl does not read 60-mvirt-ebpf.conf"
for key in net.ipv4.ip_forward net.ipv6.conf.all.forwarding; do
  last=$(grep -E "^[[:space:]]*-?$key[[:space:]]*=" "$WORK/logs/sysctl.log" | tail -n 1 | sed 's/.*=[[:space:]]*//')
  [ "$last" = 1 ] || die "after every sysctl.d file, $key is '$last', not 1"
done

say "systemd-analyze security --offline: each unit's exposure at most services.toml's exposure_max"
# systemd is not PID 1 here (no systemd-run): the sandbox is rated from the unit files, not run.
while read -r unit max; do
  threshold=$(python3 -c "print(round($max * 10))")
  out=$(chroot "$R" systemd-analyze security --offline=true --threshold="$threshold" "/lib/systemd/system/$unit" 2>&1) ||
    { printf '%s\n' "$out" | tail -n 40; die "$unit: exposure above $max, or the rating failed"; }
  echo "   $(printf '%s\n' "$out" | grep 'Overall exposure level' | sed 's/^→ //') (at most $max)"
done < <(python3 -c 'import sys, tomllib
for s in tomllib.load(open(sys.argv[1], "rb"))["services"].values(): print(s["binary"] + ".service", s["exposure_max"])' "$REPO/deploy/services.toml")

say "operator configuration in /etc/mvirt/"
sed -i "s|^MVIRT_ZFS_POOL=.*|MVIRT_ZFS_POOL=$POOL|" "$R/etc/mvirt/zfs.env"
sed -i "s|^MVIRT_VMM_ALLOWED_DIRS=.*|MVIRT_VMM_ALLOWED_DIRS=/var/lib/mvirt,$WORK/shared/pool/mnt|" "$R/etc/mvirt/vmm.env"
sed -i "s|^#MVIRT_NODE_NAME=.*|MVIRT_NODE_NAME=deploy-test|" "$R/etc/mvirt/node.env"
cp "$WORK"/images/{disk.raw,vmlinuz,initramfs.img} "$R/var/lib/mvirt/images/"

declare -A PIDS
# running PID: the process exists and is not a zombie (the daemons are not this shell's children).
running() { [ -e "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }
start_unit() {
  PIDS[$1]=$($UNITRUN start "$R" "$1.service" "$WORK/logs/$1.log")
  echo "   $1: pid ${PIDS[$1]} ($($UNITRUN show "$R" "$1.service" | sed -n 1p))"
}
connects() { # connects PATH [setpriv args...]: a unix stream connect to PATH succeeds
  local path=$1; shift
  "$@" /usr/bin/python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(sys.argv[1])' "$path" 2>/dev/null
}
grpc_up() { # a daemon is up when its unix socket (from the packaged env file) accepts
  local path; path=$(sed -n "s/^$1=//p" "$R/etc/mvirt/$2.env"); path=${path#unix:}
  [ -S "$R$path" ] && connects "$R$path"
}
wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  local end=$(($(date +%s) + secs))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}
mapfile -t ORDER < <($UNITRUN order "$R")
echo "   order: ${ORDER[*]}"
pos() { local i; for i in "${!ORDER[@]}"; do [ "${ORDER[$i]}" = "$1.service" ] && echo "$i"; done; }
[ ${#ORDER[@]} = 6 ] || die "expected six units, found ${ORDER[*]}"
for dep in mvirt-log mvirt-zfs mvirt-ebpf; do
  [ "$(pos "$dep")" -lt "$(pos mvirt-vmm)" ] || die "$dep does not start before mvirt-vmm"
done
for dep in mvirt-log mvirt-zfs mvirt-ebpf mvirt-vmm mvirt-api; do
  [ "$(pos "$dep")" -lt "$(pos mvirt-node)" ] || die "$dep does not start before mvirt-node"
done

say "starting the daemons as their units say, in After= order"
API=https://127.0.0.1:8080
# mvirt-api serves TLS with the cluster CA it creates at bootstrap; every client here trusts
# exactly that CA, and the agent is configured with it as an operator would (/etc/mvirt/ca.pem).
CA=$R/var/lib/mvirt/api/tls/ca.pem
for unit in "${ORDER[@]}"; do
  name=${unit%.service}
  case $name in
    mvirt-log) start_unit "$name"; wait_for "mvirt-log" 30 grpc_up MVIRT_LOG_LISTEN log ;;
    mvirt-zfs) start_unit "$name"; wait_for "mvirt-zfs" 30 grpc_up MVIRT_ZFS_LISTEN zfs ;;
    mvirt-ebpf) start_unit "$name"; wait_for "mvirt-ebpf" 30 grpc_up MVIRT_EBPF_LISTEN ebpf ;;
    mvirt-vmm) start_unit "$name"; wait_for "mvirt-vmm" 30 grpc_up MVIRT_VMM_LISTEN vmm ;;
    mvirt-api)
      start_unit "$name"
      wait_for "the cluster CA" 60 test -s "$CA"
      wait_for "mvirt-api" 60 curl -sf --cacert "$CA" -o /dev/null "$API/v1/health"
      wait_for "the admin token" 30 test -s "$R/var/lib/mvirt/api/admin.token"
      [ "$(chroot "$R" stat -c "%U %a" /var/lib/mvirt/api/admin.token)" = "mvirt 600" ] || die "admin.token is not mvirt's, 0600"
      TOKEN=$(cat "$R/var/lib/mvirt/api/admin.token")
      # The node token the agent's packaged configuration expects in /etc/mvirt/node.token.
      NODE_TOKEN=$(curl -sSf --cacert "$CA" -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data '{"name":"hosts","role":"node"}' "$API/v1/tokens" | jq -r .token)
      install -m 0600 /dev/null "$R/etc/mvirt/node.token"
      printf %s "$NODE_TOKEN" >"$R/etc/mvirt/node.token"
      install -m 0644 "$CA" "$R/etc/mvirt/ca.pem"
      sed -i "s|^#MVIRT_NODE_CA_FILE=.*|MVIRT_NODE_CA_FILE=/etc/mvirt/ca.pem|" "$R/etc/mvirt/node.env"
      grep -qx 'MVIRT_NODE_CA_FILE=/etc/mvirt/ca.pem' "$R/etc/mvirt/node.env" || die "node.env has no MVIRT_NODE_CA_FILE line to set" ;;
    mvirt-node) start_unit "$name" ;;
    *) die "an unknown unit $unit was installed" ;;
  esac
done
MVIRT_UID=$(chroot "$R" id -u mvirt)
for name in mvirt-log mvirt-api; do # User=mvirt in their units
  [ "$(awk '/^Uid:/{print $2}' "/proc/${PIDS[$name]}/status")" = "$MVIRT_UID" ] || die "$name does not run as mvirt"
done

say "the local daemons are on root-only unix sockets, not on TCP"
for d in vmm zfs ebpf log; do
  owner=root; [ "$d" = log ] && owner=mvirt # mvirt-log runs as mvirt; mvirt-api (mvirt) is its client
  [ "$(chroot "$R" stat -c "%a %U %F" "/run/mvirt/$d.sock")" = "600 $owner socket" ] ||
    die "/run/mvirt/$d.sock is not a 0600 socket of $owner: $(chroot "$R" stat -c "%a %U %F" "/run/mvirt/$d.sock")"
  connects "/run/mvirt/$d.sock" chroot "$R" || die "root cannot connect to /run/mvirt/$d.sock"
  # Refused for the right reason (permission), not because python or the path failed.
  refused=$(chroot "$R" setpriv --reuid nobody --regid nogroup --clear-groups /usr/bin/python3 -c 'import socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print("connected")
except OSError as e:
    print(type(e).__name__)' "/run/mvirt/$d.sock" 2>&1)
  [ "$refused" = PermissionError ] || die "user nobody connecting to /run/mvirt/$d.sock: $refused (expected PermissionError)"
done
for port in 50051 50052 50053 50054; do
  if timeout 1 bash -c "</dev/tcp/127.0.0.1/$port" 2>/dev/null || timeout 1 bash -c "</dev/tcp/::1/$port" 2>/dev/null; then
    die "something listens on TCP port $port"
  fi
done

api() { # api METHOD PATH [JSON]
  if [ $# -ge 3 ]; then
    curl -sS -f --cacert "$CA" -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' --data "$3" "$API$2"
  else
    curl -sS -f --cacert "$CA" -X "$1" -H "Authorization: Bearer $TOKEN" "$API$2"
  fi
}
if [ -f "$REPO/mvirt-ui/package.json" ]; then
  say "the web UI from the mvirt-ui package is served at /"
  curl -sSf --cacert "$CA" "$API/" | grep -qi '<!doctype html' || die "GET / does not serve the packaged UI's index.html"
  cmp -s <(curl -sSf --cacert "$CA" "$API/") "$R/usr/share/mvirt/ui/index.html" || die "GET / is not /usr/share/mvirt/ui/index.html"
fi
say "through REST: the node registers with its node token"
wait_for "the node to be online" 60 sh -c "curl -sf --cacert '$CA' -H 'Authorization: Bearer $TOKEN' $API/v1/nodes | jq -e '.items | length == 1 and .[0].status.state == \"online\"' >/dev/null"
NET=$(api POST /v1/networks '{"name":"net","spec":{"ipv4_prefix":"10.77.0.0/24"}}' | jq -r .id)
TPL=$(api POST /v1/templates '{"name":"tiny","spec":{"source_url":"file:///var/lib/mvirt/images/disk.raw","format":"raw","kernel_url":"file:///var/lib/mvirt/images/vmlinuz","initramfs_url":"file:///var/lib/mvirt/images/initramfs.img","cmdline":"console=ttyS0 tsc_early_khz=2100000 panic=-1"}}' | jq -r .id)
VM=$(api POST /v1/vms "$(jq -n --arg net "$NET" --arg tpl "$TPL" '{name:"vm1",spec:{vcpus:1,memory_bytes:268435456,hostname:"vm1",root_volume:{template_id:$tpl,size_bytes:67108864},network_interfaces:[{network_id:$net}]}}')" | jq -r .id)
say "VM $VM: waiting until it runs"
vm_phase() { api GET "/v1/vms/$VM" | jq -r '.status.phase // ""'; }
end=$(($(date +%s) + 120))
until [ "$(vm_phase)" = running ]; do
  [ "$(vm_phase)" != failed ] && [ "$(date +%s)" -lt "$end" ] ||
    die "the VM did not run: $(api GET "/v1/vms/$VM" | jq -c '{scheduling, status}')"
  sleep 0.5
done
ADDR=$(api GET "/v1/nics?project=default" | jq -r --arg vm "$VM" '.items[] | select(.owner_vm_id == $vm) | .spec.ipv4_address')
CONSOLE=$R/var/lib/mvirt/vmm/run/$VM/console.log
wait_for "the guest's DHCP lease from mvirt-ebpf ($ADDR)" 90 grep -q "MVIRT-DHCP-BOUND ip=$ADDR" "$CONSOLE"
grep -q "MVIRT-CIDATA-HOSTNAME vm1" "$CONSOLE" || die "the guest did not apply its cloud-init hostname"
QEMU=$(pgrep -f "qemu-system.*$VM" | head -n 1)
[ -n "$QEMU" ] && [ "$(readlink "/proc/$QEMU/root")" = "$R" ] || die "no QEMU process for $VM inside the root"

say "mvirt-vmm stopped as KillMode=process stops it: the guest survives and is adopted"
$UNITRUN stop "$R" mvirt-vmm.service "${PIDS[mvirt-vmm]}"
! running "${PIDS[mvirt-vmm]}" || die "mvirt-vmm did not stop"
running "$QEMU" || die "stopping mvirt-vmm killed the guest"
start_unit mvirt-vmm
wait_for "mvirt-vmm" 30 grpc_up MVIRT_VMM_LISTEN vmm
wait_for "the adopted VM to be reported running" 60 sh -c "[ \"\$(curl -sf --cacert '$CA' -H 'Authorization: Bearer $TOKEN' $API/v1/vms/$VM | jq -r '.status.phase')\" = running ]"
[ "$(pgrep -f "qemu-system.*$VM" | head -n 1)" = "$QEMU" ] || die "the guest was replaced instead of adopted"
grep -q 'adopted' "$WORK/logs/mvirt-vmm.log" || die "the restarted mvirt-vmm did not log an adoption"

say "control-plane backup of the running member, restored into a fresh data directory"
NETWORKS_BEFORE=$(api GET "/v1/networks?project=default" | jq -c '[.items[].id] | sort')
FINGERPRINT=$(api GET /v1/controlplane | jq -r .ca_fingerprint)
# As docs/deploy.md says: backup as root while the member runs, restore as user mvirt.
chroot "$R" mvirt-api backup --data-dir /var/lib/mvirt/api --out /root/api.backup >"$WORK/logs/backup.log" 2>&1 ||
  { cat "$WORK/logs/backup.log"; die "mvirt-api backup failed"; }
[ "$(chroot "$R" stat -c %a /root/api.backup)" = 600 ] || die "the backup is not mode 0600"
$UNITRUN stop "$R" mvirt-api.service "${PIDS[mvirt-api]}"
mv "$R/var/lib/mvirt/api" "$R/var/lib/mvirt/api.lost"
chroot "$R" install -d -o mvirt -g mvirt /var/lib/mvirt/api
chroot "$R" install -o mvirt -m 0600 /root/api.backup /tmp/api.backup
chroot "$R" runuser -u mvirt -- mvirt-api restore --from /tmp/api.backup --data-dir /var/lib/mvirt/api \
  >"$WORK/logs/restore.log" 2>&1 || { cat "$WORK/logs/restore.log"; die "mvirt-api restore failed"; }
start_unit mvirt-api
wait_for "the restored mvirt-api" 60 curl -sf --cacert "$CA" -o /dev/null "$API/v1/health"
[ "$(api GET /v1/controlplane | jq -r .ca_fingerprint)" = "$FINGERPRINT" ] || die "the restored member has another CA"
[ "$(api GET /v1/controlplane | jq '.members | length')" = 1 ] || die "the restored cluster is not one member"
[ "$(api GET "/v1/networks?project=default" | jq -c '[.items[].id] | sort')" = "$NETWORKS_BEFORE" ] ||
  die "the restored networks differ from the backed-up ones"
[ "$(api GET "/v1/vms/$VM" | jq -r .status.phase)" = running ] || die "the VM is not running after the restore"
running "$QEMU" || die "the guest died during the restore"
# The agent follows the restored member: a kill through it reaches the guest.
api POST "/v1/vms/$VM/kill" '{}' >/dev/null
qemu_gone() { ! running "$QEMU"; }
wait_for "the agent to carry out a kill sent to the restored member" 60 qemu_gone
wait_for "the VM to be reported stopped" 60 sh -c "[ \"\$(curl -sf --cacert '$CA' -H 'Authorization: Bearer $TOKEN' $API/v1/vms/$VM | jq -r '.status.phase')\" = stopped ]"

say "stopping every daemon as its unit says"
for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do
  name=${ORDER[$i]%.service}
  $UNITRUN stop "$R" "$name.service" "${PIDS[$name]}"
done
kill -9 "$QEMU" 2>/dev/null || true
