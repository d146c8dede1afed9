"""Measure what each process of `fleet up --demo` uses: the figures behind the resource
requests in deploy/kubernetes/ (see README "Deploying").

    .venv/bin/python deploy/measure_resources.py --seconds 120

Starts `fleet up --demo` in a temporary data directory on free ports, waits for the
API (started last), lets the demo's provisioning and sweeps run, then samples every
service's process tree (a prefork worker is its main process plus its children) once
a second: resident memory (VmRSS: peak and mean of the sampled sums; PSS: peak) and CPU (utime +
stime over the window, in millicores). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(tree.get(current, []))
    return out


def role(pid: int) -> str | None:
    """The service a direct child of `fleet up` plays, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode() for a in argv if a]
    if "--queues" in words:
        return "worker-" + words[words.index("--queues") + 1]
    for marker, name in (
        ("beat", "beat"),
        ("flower", "flower"),
        ("uvicorn", "api"),
        ("sandbox", "sandbox"),
    ):
        if marker in words:
            return name
    # Redis rewrites its process title: "redis-server 127.0.0.1:6390" in one word.
    if words and ("redis-server" in words[0] or "valkey-server" in words[0]):
        return "redis"
    return None


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared copy-on-write pages split among their users, so the
    sum over a prefork tree is about what its cgroup is charged, unlike the sum of RSS."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="sampling window")
    parser.add_argument("--settle", type=float, default=30.0, help="wait before sampling")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="fleet-measure-"))
    api_port = free_port()
    env = {
        **os.environ,
        "FLEET_DATA_DIR": str(data_dir),
        "FLEET_REDIS__EMBEDDED_PORT": str(free_port()),
        "FLEET_SANDBOX__PORT": str(free_port()),
        "FLEET_FLOWER__PORT": str(free_port()),
        "FLEET_API__PORT": str(api_port),
    }
    fleet = str(Path(sys.executable).with_name("fleet"))
    up = subprocess.Popen(
        [fleet, "up", "--demo", "--concurrency", str(args.concurrency)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The API starts last: once it answers, everything runs; then the demo's work.
        deadline = time.monotonic() + 180
        while not port_open(api_port) and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(args.settle)
        if up.poll() is not None:
            raise SystemExit(f"fleet up exited with {up.returncode}; logs in {data_dir}/logs")
        tree = children_of()
        roles = {pid: role(pid) for pid in tree.get(up.pid, [])}
        groups = {name: pid for pid, name in roles.items() if name}
        unknown = sorted(pid for pid, name in roles.items() if not name)
        rss: dict[str, list[int]] = {name: [] for name in groups}
        pss: dict[str, list[int]] = {name: [] for name in groups}
        start_ticks = {
            name: sum(cpu_ticks(p) for p in descendants(pid, tree)) for name, pid in groups.items()
        }
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            tree = children_of()
            for name, pid in groups.items():
                members = descendants(pid, tree)
                rss[name].append(sum(rss_kib(p) for p in members))
                pss[name].append(sum(pss_kib(p) for p in members))
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        tree = children_of()
        report = {}
        for name, pid in sorted(groups.items()):
            ticks = sum(cpu_ticks(p) for p in descendants(pid, tree)) - start_ticks[name]
            samples = rss[name]
            report[name] = {
                "processes": len(descendants(pid, tree)),
                "rss_peak_mib": round(max(samples) / 1024, 1),
                "rss_mean_mib": round(sum(samples) / len(samples) / 1024, 1),
                "pss_peak_mib": round(max(pss[name]) / 1024, 1),
                "cpu_millicores": round(1000 * ticks / CLOCK_TICKS / elapsed, 1),
            }
        print(
            json.dumps(
                {
                    "command": f"fleet up --demo --concurrency {args.concurrency}",
                    "window_s": round(elapsed, 1),
                    "cores": os.cpu_count(),
                    "services": report,
                    "unrecognised_children": unknown,
                },
                indent=2,
            )
        )
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
