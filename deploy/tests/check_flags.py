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


def main():
    bin_dir, flag_json, module_json, debian = (Path(a) for a in sys.argv[1:5])
    check = json.loads(flag_json.read_text())
    module = json.loads(module_json.read_text())["services"]
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
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
