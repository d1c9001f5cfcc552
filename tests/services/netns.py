"""Network namespaces as the "hosts" of a multi-node test cluster (root only).

One Linux bridge with a private /24 (the host side takes ``.1``), and per node a network
namespace joined to it by a veth pair, with its own address (``.2``, ``.3``, ...), hostname (a UTS
namespace per daemon) and an ``/etc/hosts`` that names every node (bind-mounted from
``/etc/netns/<ns>/hosts`` in a mount namespace of its own). Processes in a namespace share the host's
filesystem and pids, so the cluster's files, munge socket and job folders need nothing special.
Everything made here is listed in ``<root>/run/network`` so that a later run can remove it
after a crash.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from .processes import ServiceError, run_checked
else:  # imported by slurm.py run as a script
    from processes import ServiceError, run_checked

ETC_NETNS = Path("/etc/netns")


@dataclass(frozen=True)
class Node:
    name: str  # SLURM node name and the namespace's hostname
    netns: str
    addr: str
    veth: str  # host end, on the bridge; the namespace end is ``veth + "p"``


class Network:
    """A bridge ``bridge`` on ``10.213.<index>.0/24`` and one namespace per node."""

    def __init__(self, root: Path, index: int, nodes: int) -> None:
        self.record = Path(root) / "run" / "network"
        self.index = index % 250
        self.bridge = f"scbr{self.index}"
        self.subnet = f"10.213.{self.index}"
        self.host_addr = f"{self.subnet}.1"
        self.nodes = [Node(name=f"sn{i}", netns=f"scaling{self.index}-sn{i}", addr=f"{self.subnet}.{i + 1}",
                           veth=f"sc{self.index}n{i}") for i in range(1, nodes + 1)]  # fmt: skip

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", f"{self.host_addr} scaling-ctl"]
        return "\n".join(lines + [f"{n.addr} {n.name}" for n in self.nodes]) + "\n"

    def create(self) -> None:
        """Make the bridge and namespaces (removing any of the same names first)."""
        if shutil.which("ip") is None:
            raise ServiceError("multi-node test cluster needs `ip` (apt-get install -y iproute2)")
        remove_recorded(self.record)
        self.remove()
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"bridge": self.bridge, "netns": [n.netns for n in self.nodes],
                                           "veth": [n.veth for n in self.nodes]}))  # fmt: skip
        ip = ["ip"]
        run_checked([*ip, "link", "add", self.bridge, "type", "bridge"])
        run_checked([*ip, "addr", "add", f"{self.host_addr}/24", "dev", self.bridge])
        run_checked([*ip, "link", "set", self.bridge, "up"])
        for n in self.nodes:
            run_checked([*ip, "netns", "add", n.netns])
            run_checked([*ip, "link", "add", n.veth, "type", "veth", "peer", "name", f"{n.veth}p"])
            run_checked([*ip, "link", "set", f"{n.veth}p", "netns", n.netns])
            run_checked([*ip, "link", "set", n.veth, "master", self.bridge])
            run_checked([*ip, "link", "set", n.veth, "up"])
            run_checked([*ip, "-n", n.netns, "addr", "add", f"{n.addr}/24", "dev", f"{n.veth}p"])
            run_checked([*ip, "-n", n.netns, "link", "set", f"{n.veth}p", "up"])
            run_checked([*ip, "-n", n.netns, "link", "set", "lo", "up"])
            etc = ETC_NETNS / n.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(self.hosts_file())
            (etc / "hostname").write_text(n.name + "\n")

    def remove(self) -> None:
        _remove(self.bridge, [n.netns for n in self.nodes], [n.veth for n in self.nodes])
        self.record.unlink(missing_ok=True)

    def exec_prefix(self, node: Node) -> list[str]:
        """Run a command "on" ``node``: in its network namespace, with its hostname and hosts file.

        ``nsenter`` rather than ``ip netns exec``: the latter mounts a fresh /sys, hiding the
        cgroup mounts that slurmd 22.05 insists on seeing."""
        hosts = ETC_NETNS / node.netns / "hosts"
        return ["nsenter", f"--net=/run/netns/{node.netns}", "unshare", "--uts", "--mount", "sh", "-c",
                f'mount --bind {hosts} /etc/hosts && hostname {node.name} && exec "$@"', "on-node"]  # fmt: skip


def _remove(bridge: str, netns: list[str], veths: list[str]) -> None:
    for name in netns:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # removes its veth end too
        with contextlib.suppress(OSError):
            shutil.rmtree(ETC_NETNS / name)
    for veth in veths:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    with contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only when empty: never someone else's namespaces' files


def remove_recorded(record: Path) -> None:
    """Remove the bridge and namespaces that a (crashed) cluster listed in ``record``."""
    try:
        made = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    _remove(made.get("bridge", ""), made.get("netns", []), made.get("veth", []))
    record.unlink(missing_ok=True)


def recorded_netns(record: Path) -> list[str]:
    """The namespaces a cluster listed in ``record`` (none when it is missing or unreadable)."""
    try:
        return list(json.loads(record.read_text()).get("netns", []))
    except (OSError, ValueError):
        return []


def netns_pids(netns: str) -> list[int]:
    """Every process running in network namespace ``netns`` (what a node "runs")."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]
