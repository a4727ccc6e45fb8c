#!/usr/bin/env python3
"""Starts and stops a daemon the way its installed systemd unit says, where systemd is not PID 1.

The packaging test (scripts/test-deploy.sh) installs the .deb files into a fresh root and runs
each daemon with this: the unit file is read from that root and its ExecStart runs chrooted into
it, with the unit's environment (EnvironmentFile=, Environment=), User=/Group=, StateDirectory=
(created and owned as systemd does), UMask=, NoNewPrivileges= and CapabilityBoundingSet=
applied. Stopping follows KillMode=: `process` signals the main process only (mvirt-vmm's
guests must survive), `control-group` the process and all its descendants.
What systemd does with namespaces and filters (ProtectSystem=, SystemCallFilter=, ...) is
not reproduced here; `systemd-analyze verify` checks those directives.

    unitrun.py order ROOT               mvirt units in the order their After= lines start them
    unitrun.py start ROOT UNIT LOG      start UNIT in the background, print its pid
    unitrun.py stop ROOT UNIT PID       stop it as systemd would (SIGTERM, then SIGKILL after 20 s)
    unitrun.py show ROOT UNIT           print the command line it would run (then its environment)
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

UNIT_DIR = "lib/systemd/system"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The directives this runner applies or that cannot change how a daemon runs outside systemd.
HANDLED = {
    "Type", "EnvironmentFile", "Environment", "ExecStart", "Restart", "RestartSec", "KillMode",
    "User", "Group", "StateDirectory", "UMask", "NoNewPrivileges", "CapabilityBoundingSet",
}


def parse_unit(path):
    """{section: [(key, value)]} of a unit file (no line continuations in ours)."""
    sections, current = {}, None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(section, key):
    return [v for k, v in section if k == key]


def last(section, key, default=None):
    found = values(section, key)
    return found[-1] if found else default


def read_env_file(path):
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SystemExit(f"{path}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def expand(argv, env):
    """systemd's ExecStart variable expansion: ${VAR} is one word, a lone $VAR splits on spaces."""
    out = []
    for word in argv:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            out.extend(env.get(whole.group(1), "").split())
            continue
        out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return out


def load(root, unit):
    sections = parse_unit(Path(root) / UNIT_DIR / unit)
    service = sections.get("Service", [])
    unknown = sorted({k for k, _ in service} - HANDLED - hardening_only(service))
    if unknown:
        raise SystemExit(f"{unit}: unitrun.py does not know {', '.join(unknown)}")
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    for spec in values(service, "EnvironmentFile"):
        optional = spec.startswith("-")
        path = Path(root) / spec.lstrip("-").lstrip("/")
        if not path.exists():
            if optional:
                continue
            raise SystemExit(f"{unit}: EnvironmentFile {spec} is missing in {root}")
        env.update(read_env_file(path))
    for spec in values(service, "Environment"):
        for assignment in shlex.split(spec):
            key, _, value = assignment.partition("=")
            env[key] = value
    exec_start = last(service, "ExecStart")
    if not exec_start:
        raise SystemExit(f"{unit}: no ExecStart")
    argv = expand(shlex.split(exec_start.lstrip("@-:+!")), env)
    return sections, service, env, argv


def hardening_only(service):
    """Sandboxing directives systemd applies and this runner cannot (listed in the docstring)."""
    return {k for k, _ in service if re.match(
        r"(Protect|Private|Restrict|Lock|Memory|SystemCall|ReadWrite|ReadOnly|Dynamic)", k)}


def setpriv_args(service):
    args = ["setpriv"]
    user, group = last(service, "User"), last(service, "Group")
    if user:
        args += ["--reuid", user, "--regid", group or user, "--init-groups"]
    if last(service, "NoNewPrivileges", "no") in ("yes", "true", "1", "on"):
        args.append("--no-new-privs")
    caps = values(service, "CapabilityBoundingSet")
    if caps:
        keep = " ".join(caps).split()
        args.append("--bounding-set=" + ",".join(
            ["-all"] + ["+" + c.lower().removeprefix("cap_") for c in keep]))
    return args + ["--"]


def prepare_state(root, service):
    user, group = last(service, "User"), last(service, "Group")
    for spec in values(service, "StateDirectory"):
        for rel in spec.split():
            path = Path(root) / "var/lib" / rel
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
            if user:
                # Resolve the names inside the root: its /etc/passwd holds the packaged user.
                ids = subprocess.run(["chroot", root, "id", "-u", user], check=True,
                                     capture_output=True, text=True).stdout.strip()
                gid = subprocess.run(["chroot", root, "getent", "group", group or user],
                                     check=True, capture_output=True, text=True).stdout.split(":")[2]
                os.chown(path, int(ids), int(gid))


def start(root, unit, log):
    _, service, env, argv = load(root, unit)
    prepare_state(root, service)
    umask = int(last(service, "UMask", "0022"), 8)
    cmd = ["chroot", root] + setpriv_args(service) + argv
    with open(log, "ab") as out:
        out.write(f"unitrun: {shlex.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, preexec_fn=lambda: os.umask(umask))
    print(proc.pid)


def descendants(pid):
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def stop(root, unit, pid):
    _, service, _, _ = load(root, unit)
    mode = last(service, "KillMode", "control-group")
    targets = [pid] if mode == "process" else [pid] + descendants(pid)
    for target in targets:
        try:
            os.kill(target, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while any(alive(t) for t in targets) and time.monotonic() < deadline:
        time.sleep(0.05)
    for target in targets:
        if alive(target):
            print(f"unitrun: {unit}: pid {target} ignored SIGTERM for 20 s, SIGKILL", file=sys.stderr)
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass


def order(root):
    units = sorted(p.name for p in (Path(root) / UNIT_DIR).glob("mvirt-*.service"))
    after = {}
    for unit in units:
        service_after = " ".join(values(parse_unit(Path(root) / UNIT_DIR / unit).get("Unit", []), "After"))
        after[unit] = [u for u in service_after.split() if u in units]
    done = []
    while len(done) < len(units):
        ready = [u for u in units if u not in done and all(a in done for a in after[u])]
        if not ready:
            raise SystemExit(f"ordering cycle among {sorted(set(units) - set(done))}")
        done.append(ready[0])
    print("\n".join(done))


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    cmd, root = sys.argv[1], sys.argv[2]
    if cmd == "order":
        order(root)
    elif cmd == "start" and len(sys.argv) == 5:
        start(root, sys.argv[3], sys.argv[4])
    elif cmd == "stop" and len(sys.argv) == 5:
        stop(root, sys.argv[3], int(sys.argv[4]))
    elif cmd == "show" and len(sys.argv) == 4:
        _, service, env, argv = load(root, sys.argv[3])
        lines = [shlex.join(setpriv_args(service) + argv)] + [f"{k}={env[k]}" for k in sorted(env)]
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
