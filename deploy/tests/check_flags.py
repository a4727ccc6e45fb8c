#!/usr/bin/env python3
"""Checks every flag and environment variable mvirt's packaging hands a daemon against the
daemon itself (`--help`), so a deployment can never pass something the daemon does not read.

    check_flags.py BIN_DIR FLAGCHECK_JSON MODULE_JSON DEBIAN_DIR

FLAGCHECK_JSON is nix/lib.nix's `flagCheck` (nix-instantiate --eval --strict --json): for each
service the largest argv the NixOS module can pass (every setting set) and the environment
variable of every setting. MODULE_JSON is nix/tests/module-eval.nix: the systemd services the
NixOS module itself defines (every service enabled, settings at their defaults). For each
service this
  - runs the module's own ExecStart argv with --help appended (for the API: the `exec` line of
    its credential wrapper), checks KillMode=process for mvirt-vmm and that the join token
    reaches mvirt-api only as a credential;
  - runs `<binary> <that argv> --help`: clap parses every flag and value before it gets to
    --help, so an unknown flag or a value the daemon cannot parse fails it;
  - finds every environment variable in the `[env: NAME=...]` lines of `--help`;
  - checks each variable of the Debian /etc/mvirt/<service>.env (set or commented out) and
    every `--flag` on the Debian unit's ExecStart the same way.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path


def main():
    bin_dir, flag_json, module_json, debian = (Path(a) for a in sys.argv[1:5])
    check = json.loads(flag_json.read_text())
    module = json.loads(module_json.read_text())["services"]
    failures = []
    if sorted(module) != sorted(s["binary"] for s in check.values()):
        failures.append(f"the NixOS module defines {sorted(module)}, the description {sorted(check)}")
    for key, svc in sorted(check.items()):
        binary = bin_dir / svc["binary"]
        helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
        known_env = set(re.findall(r"\[env: ([A-Z0-9_]+)=", helptext))
        known_flags = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", helptext))

        run = subprocess.run([binary, *svc["argv"], "--help"], capture_output=True, text=True)
        if run.returncode != 0:
            failures.append(f"{key}: the NixOS module's argv is refused by {svc['binary']}: "
                            f"{' '.join(svc['argv'])}\n    {run.stderr.strip()}")
        for env in svc["env"] + svc["secretEnv"]:
            if env not in known_env:
                failures.append(f"{key}: {env} is not an environment variable of {svc['binary']}")

        unit = module.get(svc["binary"])
        if unit:
            start = unit["ExecStart"]
            # A service with secrets starts through a wrapper script whose last line execs.
            line = start if "\n" not in start else next(
                l for l in start.splitlines() if l.startswith("exec "))[len("exec "):]
            words = shlex.split(line)
            if Path(words[0]).name != svc["binary"]:
                failures.append(f"{key}: the module starts {words[0]}, not {svc['binary']}")
            run = subprocess.run([binary, *words[1:], "--help"], capture_output=True, text=True)
            if run.returncode != 0:
                failures.append(f"{key}: the module's ExecStart is refused by {svc['binary']}: "
                                f"{line}\n    {run.stderr.strip()}")
            for secret in svc["secretEnv"]:
                if secret in line or f"export {secret}" not in start:
                    failures.append(f"{key}: {secret} must reach the daemon from a credential, not argv")
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
