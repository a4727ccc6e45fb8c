#!/usr/bin/env python3
"""Checks every flag and environment variable mvirt's packaging hands a daemon against the
daemon itself (`--help`), so a deployment can never pass something the daemon does not read.

    check_flags.py BIN_DIR FLAGCHECK_JSON MODULE_JSON DEBIAN_DIR

FLAGCHECK_JSON is nix/lib.nix's `flagCheck` (nix-instantiate --eval --strict --json): for each
service the largest argv the NixOS module can pass (every setting set) and the environment
variable of every setting. MODULE_JSON is nix/tests/module-eval.nix: the systemd services the
NixOS module itself defines (every service enabled, settings at their defaults). For each
service this
  - runs the module's own ExecStart argv with --help appended, checks KillMode=process for
    mvirt-vmm and that every file setting of kind "credential" (the API's join token) is
    loaded with LoadCredential= and passed as the path of that copy (%d/<name>);
  - runs `<binary> <that argv> --help`: clap parses every flag and value before it gets to
    --help, so an unknown flag or a value the daemon cannot parse fails it;
  - finds every environment variable in the `[env: NAME=...]` lines of `--help`;
  - checks each variable of the Debian /etc/mvirt/<service>.env (set or commented out) and
    every `--flag` on the Debian unit's ExecStart the same way;
  - reads deploy/services.toml itself: every flag of `--help` (but --help, --version) has a
    setting or an `unexposed` entry with a reason, each setting's environment variable is the
    one `--help` shows for its flag, and a packaged `default` equals the daemon's own
    `[default: ...]` unless the setting says why not (`differs`) — so e.g. mvirt-zfs
    --import-dir and mvirt-vmm --allowed-dir cannot differ between the daemon, the .debs and
    the NixOS module without a stated reason.
It then checks what the host gets for the daemons (check_host), in the NixOS module (MODULE_JSON's
kernelModules, sysctl, firewall, each unit's After=/Wants=) and in the Debian units (After=,
Wants=), against what the daemons do, not against services.toml alone:
  - kernel modules: tun (the TAPs mvirt-ebpf creates and the hypervisors open), vxlan (mvirt-
    ebpf's tunnel device), nf_tables (its SNAT table) for mvirt-ebpf; tun, vhost_net, vhost_vsock
    for mvirt-vmm; the module loads exactly the union services.toml declares;
  - sysctls: net.ipv4.ip_forward and net.ipv6.conf.all.forwarding = 1 for mvirt-ebpf (SNAT of
    public networks routes guest traffic through the host);
  - firewall (openFirewall): exactly the TCP ports of every listener whose `--help` default is a
    non-loopback host:port (the API's REST, NodeService and Raft, the agent's console relay) and
    mvirt-ebpf's --tunnel-port (UDP) — never a loopback /metrics port or a unix socket;
  - ordering: every daemon after mvirt-log (audit), mvirt-vmm after mvirt-zfs and mvirt-ebpf
    (volumes, TAPs), the agent after all five, mvirt-zfs after the pool import, the network-
    facing daemons after network-online.target (and wanting it).
"""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

SERVICES_TOML = Path(__file__).resolve().parent.parent / "services.toml"


def parse_help(helptext):
    """{flag: {"env": NAME or None, "default": [values] or None}} from clap's long --help."""
    flags, current = {}, None
    for line in helptext.splitlines():
        m = re.match(r"^\s{2,}(?:-[A-Za-z], )?(--[a-z0-9][a-z0-9-]*)", line)
        if m:
            current = flags.setdefault(m.group(1), {"env": None, "default": None})
            continue
        if current is None:
            continue
        m = re.search(r"\[env: ([A-Z0-9_]+)=", line)
        if m:
            current["env"] = m.group(1)
        m = re.search(r"\[default: (.*)\]\s*$", line)
        if m:
            current["default"] = [v.strip() for v in m.group(1).split(",")]
    return flags


def as_list(value):
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def check_description(key, service, services, helpflags):
    """The services.toml side: coverage, variables, defaults (see the module doc)."""
    failures = []
    binary = service["binary"]
    settings = service["settings"]
    by_flag = {s["flag"]: (name, s) for name, s in settings.items()}
    unexposed = service.get("unexposed", {})
    for flag in sorted(helpflags):
        if flag in ("--help", "--version") or flag in by_flag:
            continue
        if flag in unexposed:
            continue
        failures.append(f"{key}: {binary} {flag} has no setting in deploy/services.toml "
                        "(add one, or an `unexposed` entry saying why not)")
    for flag in unexposed:
        if flag not in helpflags:
            failures.append(f"{key}: unexposed {flag} is not a flag of {binary}")
        if flag in by_flag:
            failures.append(f"{key}: {flag} is both a setting and unexposed")
    for flag, (name, s) in sorted(by_flag.items()):
        info = helpflags.get(flag)
        if info is None:
            continue  # reported with the argv check
        if info["env"] != s["env"]:
            failures.append(f"{key}.{name}: {flag} reads {info['env']}, services.toml says {s['env']}")
        packaged = None
        if "endpoint_of" in s:
            listen = services[s["endpoint_of"]]["settings"]["listen"]["default"]
            packaged = "unix:" + listen if listen.startswith("/") else "http://" + listen
        elif "default" in s:
            packaged = s["default"]
        if packaged is None or s.get("kind") == "switch":
            if "differs" in s:
                failures.append(f"{key}.{name}: `differs` without a packaged default")
            continue
        same = info["default"] is not None and as_list(packaged) == info["default"]
        if same and "differs" in s:
            failures.append(f"{key}.{name}: says it `differs`, but {binary}'s default is the same "
                            f"({info['default']}): remove `differs`")
        if not same and "differs" not in s:
            failures.append(f"{key}.{name}: the packages set {flag} {packaged!r}, {binary}'s own "
                            f"default is {info['default']}: make them equal, or say why in `differs`")
    return failures


# What the daemons need loaded, by service key, and why (kernel module: reason).
NEEDED_MODULES = {
    "ebpf": {
        "tun": "mvirt-ebpf creates each NIC's TAP device",
        "vxlan": "mvirt-ebpf's tunnel device (ip link add ... type vxlan) between hypervisor hosts",
        "nf_tables": "mvirt-ebpf's SNAT table for public networks (nft -f)",
    },
    "vmm": {
        "tun": "the hypervisors open the NICs' TAP devices (/dev/net/tun)",
        "vhost_net": "in-kernel virtio-net backend (/dev/vhost-net) for the hypervisors",
        "vhost_vsock": "in-kernel vsock backend (/dev/vhost-vsock) for the hypervisors",
    },
}
NEEDED_SYSCTL = {
    "ebpf": {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"},
}
# unit: the units it must start after (and whether it must also want them).
NEEDED_AFTER = {
    "mvirt-zfs": ["mvirt-log.service", "zfs-import.target"],
    "mvirt-ebpf": ["mvirt-log.service", "network-online.target"],
    "mvirt-vmm": ["mvirt-log.service", "mvirt-zfs.service", "mvirt-ebpf.service"],
    "mvirt-api": ["mvirt-log.service", "network-online.target"],
    "mvirt-node": ["mvirt-log.service", "mvirt-zfs.service", "mvirt-ebpf.service",
                   "mvirt-vmm.service", "mvirt-api.service", "network-online.target"],
}
# After=network-online.target orders nothing unless something pulls the target in.
NEEDED_WANTS = {
    "mvirt-ebpf": ["network-online.target"],
    "mvirt-api": ["network-online.target"],
    "mvirt-node": ["network-online.target", "mvirt-zfs.service", "mvirt-ebpf.service", "mvirt-vmm.service"],
}
LOOPBACK = ("127.", "[::1]", "::1", "localhost")


def public_ports(helps):
    """{"tcp": {port: "binary --flag"}, "udp": {...}} the daemons listen on for other hosts,
    from their --help defaults: every *-listen flag with a non-loopback host:port default, and
    mvirt-ebpf's VXLAN --tunnel-port."""
    ports = {"tcp": {}, "udp": {}}
    for binary, flags in helps.items():
        for flag, info in flags.items():
            default = info["default"]
            if not flag.endswith("listen") or not default or len(default) != 1:
                continue
            m = re.fullmatch(r"(.+):(\d+)", default[0])
            if m and not m.group(1).startswith(LOOPBACK):
                ports["tcp"][int(m.group(2))] = f"{binary} {flag} {default[0]}"
    tunnel = helps["mvirt-ebpf"].get("--tunnel-port", {}).get("default")
    if not tunnel:
        raise SystemExit("mvirt-ebpf --help shows no default for --tunnel-port")
    ports["udp"][int(tunnel[0])] = f"mvirt-ebpf --tunnel-port {tunnel[0]}"
    return ports


def check_order(where, unit, after, wants):
    failures = []
    for dep in NEEDED_AFTER.get(unit, []):
        if dep not in after:
            failures.append(f"{where}: {unit} is not ordered after {dep} (After={' '.join(after)})")
    for dep in NEEDED_WANTS.get(unit, []):
        if dep not in wants:
            failures.append(f"{where}: {unit} does not want {dep} (Wants={' '.join(wants)})")
    return failures


def check_host(services, module_all, helps, debian):
    """The host side of the module and the units: see the module doc."""
    failures = []
    declared = []
    for key, svc in services.items():
        mods = svc.get("kernel_modules", [])
        declared += [m for m in mods if m not in declared]
        for mod, why in NEEDED_MODULES.get(key, {}).items():
            if mod not in mods:
                failures.append(f"services.toml: {key} does not load {mod} ({why})")
        for name, value in NEEDED_SYSCTL.get(key, {}).items():
            if str(svc.get("sysctl", {}).get(name)) != value:
                failures.append(f"services.toml: {key} does not set {name} = {value}")
    if sorted(module_all["kernelModules"]) != sorted(declared):
        failures.append(f"the NixOS module loads {module_all['kernelModules']}, services.toml declares {declared}")
    wanted_sysctl = {}
    for key, svc in services.items():
        wanted_sysctl.update({k: str(v) for k, v in svc.get("sysctl", {}).items()})
    if {k: str(v) for k, v in module_all["sysctl"].items()} != wanted_sysctl:
        failures.append(f"the NixOS module sets sysctls {module_all['sysctl']}, services.toml {wanted_sysctl}")

    ports = public_ports(helps)
    for proto, option in (("tcp", "allowedTCPPorts"), ("udp", "allowedUDPPorts")):
        opened = set(module_all["firewall"].get(option, []))
        for port, why in sorted(ports[proto].items()):
            if port not in opened:
                failures.append(f"openFirewall does not open {proto} {port} ({why})")
        for port in sorted(opened - set(ports[proto])):
            failures.append(f"openFirewall opens {proto} {port}, which no daemon's default listens on for other hosts")
    print("host: modules " + " ".join(module_all["kernelModules"]) + "; sysctl "
          + " ".join(f"{k}={v}" for k, v in module_all["sysctl"].items()) + "; firewall "
          + "; ".join(f"{proto} {port} ({why})" for proto in ports for port, why in sorted(ports[proto].items())))

    for unit, svc in module_all["services"].items():
        failures += check_order("NixOS module", unit, svc["after"], svc["wants"])
    for path in sorted(debian.glob("*/lib/systemd/system/mvirt-*.service")):
        after, wants = [], []
        for line in path.read_text().splitlines():
            if line.startswith("After="):
                after += line[len("After="):].split()
            elif line.startswith("Wants="):
                wants += line[len("Wants="):].split()
        failures += check_order(str(path), path.stem, after, wants)
    if sorted(module_all["services"]) != sorted([*NEEDED_AFTER, "mvirt-log"]):
        failures.append(f"the module defines {sorted(module_all['services'])}: update NEEDED_AFTER")
    return failures


def main():
    bin_dir, flag_json, module_json, debian = (Path(a) for a in sys.argv[1:5])
    check = json.loads(flag_json.read_text())
    module_all = json.loads(module_json.read_text())
    module = module_all["services"]
    helps = {}
    failures = []
    with open(SERVICES_TOML, "rb") as f:
        services = tomllib.load(f)["services"]
    if sorted(module) != sorted(s["binary"] for s in check.values()):
        failures.append(f"the NixOS module defines {sorted(module)}, the description {sorted(check)}")
    for key, svc in sorted(check.items()):
        binary = bin_dir / svc["binary"]
        helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
        known_env = set(re.findall(r"\[env: ([A-Z0-9_]+)=", helptext))
        known_flags = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", helptext))
        helpflags = parse_help(helptext)
        helps[svc["binary"]] = helpflags
        if not helpflags:
            failures.append(f"{key}: no flags found in {svc['binary']} --help")
        failures += check_description(key, services[key], services, helpflags)

        run = subprocess.run([binary, *svc["argv"], "--help"], capture_output=True, text=True)
        if run.returncode != 0:
            failures.append(f"{key}: the NixOS module's argv is refused by {svc['binary']}: "
                            f"{' '.join(svc['argv'])}\n    {run.stderr.strip()}")
        for env in svc["env"]:
            if env not in known_env:
                failures.append(f"{key}: {env} is not an environment variable of {svc['binary']}")

        unit = module.get(svc["binary"])
        if unit:
            line = unit["ExecStart"]
            words = shlex.split(line)
            if Path(words[0]).name != svc["binary"]:
                failures.append(f"{key}: the module starts {words[0]}, not {svc['binary']}")
            run = subprocess.run([binary, *words[1:], "--help"], capture_output=True, text=True)
            if run.returncode != 0:
                failures.append(f"{key}: the module's ExecStart is refused by {svc['binary']}: "
                                f"{line}\n    {run.stderr.strip()}")
            for cred in svc["credentials"]:
                name = cred.split(":", 1)[0]
                loaded = any(c.startswith(f"{name}:/") for c in unit["credentials"])
                if not loaded or f"%d/{name}" not in words:
                    failures.append(f"{key}: {name} must be loaded as a credential and passed as %d/{name}: "
                                    f"{line} (LoadCredential={unit['credentials']})")
            if (unit["KillMode"] == "process") != (key == "vmm"):
                failures.append(f"{key}: KillMode={unit['KillMode']} (only mvirt-vmm runs with KillMode=process)")

        env_file = next(debian.glob(f"*/etc/mvirt/{key}.env"))
        for line in env_file.read_text().splitlines():
            m = re.match(r"#?(MVIRT_[A-Z0-9_]+)=", line)
            if m and m.group(1) not in known_env:
                failures.append(f"{env_file}: {m.group(1)} is not an environment variable of {svc['binary']}")
        unit = next(debian.glob(f"*/lib/systemd/system/{svc['binary']}.service"))
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                for flag in re.findall(r"(--[a-z0-9][a-z0-9-]*)", line):
                    if flag not in known_flags:
                        failures.append(f"{unit}: {flag} is not a flag of {svc['binary']}")
        print(f"{svc['binary']}: {len(svc['argv'])} argv words, {len(svc['env'])} variables checked")
    failures += check_host(services, module_all, helps, debian)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
