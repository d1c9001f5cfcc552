"""A real SLURM cluster (one node, or several) for tests and for trying ``--executor slurm`` by hand.

Runs as root with no systemd: MariaDB, munge, slurmdbd, slurmctld and slurmd are started by hand,
each with its files under one folder, listening on fixed, unusual ports on 127.0.0.1. Clients
(sbatch, sacct, submitit) find the cluster through ``SLURM_CONF`` (see ``SlurmCluster.env``);
nothing is written to /etc/slurm. With ``nodes > 1`` every slurmd runs "on its own host": a
network namespace with its own address and hostname on a bridge made for the cluster
(``netns.py``); slurmctld is then reached at the bridge's address instead of 127.0.0.1.

By hand: ``scripts/slurm-cluster up|status|down --root DIR [--nodes 2]`` (``slurm_cli.py``).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__:
    from . import processes as ps
    from .netns import Network, Node, netns_pids, recorded_netns, remove_recorded
    from .slurm_conf import CLUSTER_NAME, DB_PASSWORD, PORT_BASE, slurm_conf, slurmdbd_conf
else:  # imported by slurm_cli.py run as a script
    import processes as ps
    from netns import Network, Node, netns_pids, recorded_netns, remove_recorded
    from slurm_conf import CLUSTER_NAME, DB_PASSWORD, PORT_BASE, slurm_conf, slurmdbd_conf

# Debian package -> a program it provides (checked before anything starts).
PACKAGES = {
    "munge": "munged",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "slurm-client": "sbatch",
    "slurmdbd": "slurmdbd",
    "mariadb-server": "mariadbd",
    "iproute2": "ip",  # network namespaces of the multi-node cluster
}
# Daemons carry this variable (value: the cluster root) so that a later run can find and stop
# daemons left behind by a crashed one, even when their pid files are gone.
MARKER = "SCALING_TEST_SLURM_ROOT"
# Smaller InnoDB files: ~100 MB per cluster folder instead of ~180 MB.
_INNODB_SMALL = ["--innodb-log-file-size=8M", "--innodb-data-file-path=ibdata1:4M:autoextend",
                 "--innodb-buffer-pool-size=64M"]  # fmt: skip


def ensure_packages() -> None:
    """Install the Debian packages the cluster needs when any is missing (root only)."""
    missing = [pkg for pkg, prog in PACKAGES.items() if not ps.which(prog)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ps.ServiceError(
            f"SLURM test cluster needs the Debian packages {' '.join(missing)}; install them as "
            f"root: apt-get install -y {' '.join(PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"]  # another apt run may hold the lock
    ps.run_checked(["apt-get", *wait_for_lock, "update", "-qq"], env=env, timeout=600)
    ps.run_checked(
        ["apt-get", *wait_for_lock, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        env=env,
        timeout=900,
    )


WORKER_PORTS = 200  # each pytest-xdist worker's block: a single-node cluster at +0, a two-node one at +100


def worker_port_base(nodes: int = 1) -> int:
    """This test worker's first port for a cluster of ``nodes`` (``gw<i>`` of ``pytest -n``): two
    workers that start clusters at the same moment never probe the same ports, so neither takes
    the other's between its check and its bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return PORT_BASE + WORKER_PORTS * index + (100 if nodes > 1 else 0)


class SlurmCluster:
    """Start/stop a cluster (partition ``debug``) whose files live under ``root``.

    ``port_base`` picks four consecutive ports: slurmctld, slurmd, slurmdbd, MariaDB. ``nodes=1``
    runs slurmd on this host (node named after it); ``nodes=N`` runs N slurmd, nodes ``sn1..snN``,
    each in its own network namespace (``self.network``).
    """

    def __init__(self, root: Path, port_base: int = PORT_BASE, cpus: int | None = None,
                 nodes: int = 1) -> None:
        self.root = Path(root).resolve()
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.num_nodes = nodes
        self.network: Network | None = None
        self._set_ports(port_base)
        if nodes > 1:
            self.network = self._network()
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.db_socket = self.root / "mysql" / "mysqld.sock"
        self.logs = self.root / "log"
        if len(str(self.munge_socket)) > 100:  # sun_path holds 108 bytes
            raise ps.ServiceError(
                f"SLURM test cluster root {self.root} is too long for unix sockets under it; "
                "use a shorter folder"
            )

    def _set_ports(self, base: int) -> None:
        self.ctld_port, self.slurmd_port, self.dbd_port, self.db_port = self.ports = tuple(
            base + i for i in range(4)
        )

    def _network(self) -> Network:
        # One subnet per port block: two live clusters never share a bridge or an address.
        return Network(self.root, (self.ctld_port - PORT_BASE) // 10, self.num_nodes)

    @property
    def nodes(self) -> list[str]:
        """SLURM node names, in nodelist order."""
        return [n.name for n in self.network.nodes] if self.network else [self.node]

    @property
    def ctld_addr(self) -> str:
        """Where slurmctld is reached from the nodes (and from this host)."""
        return self.network.host_addr if self.network else "127.0.0.1"

    @property
    def env(self) -> dict[str, str]:
        """Variables a client process needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90, detached: bool = False) -> None:
        """Install packages if needed, stop leftovers, start every daemon, wait for an idle node.

        A cluster is stopped by ``stop()``; if its process dies first, the next ``start()`` on
        the machine stops it, unless ``detached`` (kept until ``stop()``, as for the CLI)."""
        if os.geteuid() != 0:
            raise ps.ServiceError("the SLURM test cluster runs its daemons as root; run as root")
        ensure_packages()
        self._stop_leftovers()
        self._write_files()
        (self.root / "run" / "owner").write_text("0" if detached else str(os.getpid()))
        deadline = time.monotonic() + timeout
        self._spawned: dict[str, subprocess.Popen[bytes]] = {}
        try:
            self._spawn("munged", [ps.which("munged"), "--foreground", "--force", "--num-threads=10",
                                   f"--socket={self.munge_socket}",
                                   f"--key-file={self.root / 'munge' / 'munge.key'}",
                                   f"--log-file={self.logs / 'munged.log'}",
                                   f"--pid-file={self.root / 'run' / 'munged.pid'}",
                                   f"--seed-file={self.root / 'munge' / 'munged.seed'}"])  # fmt: skip
            self._wait("munge", lambda: self.munge_socket.exists(), deadline)
            self._start_mariadb(deadline)
            self._spawn("slurmdbd", [ps.which("slurmdbd"), "-D"])
            self._wait(
                "slurmdbd", lambda: self._ok(["sacctmgr", "-n", "list", "cluster"]), deadline
            )
            if CLUSTER_NAME not in self._out(
                ["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"]
            ):
                ps.run_checked(
                    ["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], env=self._client_env()
                )
            self._spawn("slurmctld", [ps.which("slurmctld"), "-D", "-f", str(self.conf)])
            if self.network is None:
                self._spawn("slurmd", [ps.which("slurmd"), "-D", "-f", str(self.conf)])
            for node in self.network.nodes if self.network else []:
                self._start_slurmd(node)
            self._wait(f"{self.num_nodes} idle node(s) in `sinfo`", self._node_idle, deadline)
            self._wait("slurmctld registered in slurmdbd", self._registered, deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel jobs, then stop every daemon of this root and everything they started; remove
        the namespaces and bridge of a multi-node cluster (also when started by another process)."""
        started = [p.pid for p in getattr(self, "_spawned", {}).values() if p.poll() is None]
        pids = sorted({*ps.marked_pids(MARKER, str(self.root)), *started})
        if pids:
            self._stop_daemons(pids, started)
        for proc in getattr(self, "_spawned", {}).values():
            proc.poll()  # reap what this object started
        record = self.root / "run" / "network"
        for netns in recorded_netns(record):  # whatever a job left running "on" a node
            ps.kill_all(netns_pids(netns), grace=2)
        remove_recorded(record)

    def _stop_daemons(self, pids: list[int], started: list[int]) -> None:
        ctld_up = any(ps.proc_name(p) == "slurmctld" for p in pids)
        if ctld_up and self._ok(["squeue", "-h"]):  # without it squeue retries for a minute
            subprocess.run(["scancel", "--user", "root", "--full"], env=self._client_env(),
                           capture_output=True, timeout=30)  # fmt: skip
            end = time.monotonic() + 10
            while self._out(["squeue", "-h", "-o", "%i"]).strip() and time.monotonic() < end:
                time.sleep(0.3)
        # Job steps first (children of slurmd), then daemons in reverse start order;
        # slurmscriptd ignores TERM and leaves with its slurmctld.
        ps.kill_all(ps.descendants([p for p in pids if ps.proc_name(p) == "slurmd"]))
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            ps.kill_all([p for p in pids if ps.proc_name(p) == name], grace=10)
        ps.kill_all(sorted({*ps.marked_pids(MARKER, str(self.root)), *started}), grace=1)

    # -- nodes (multi-node clusters) ---------------------------------------------------------

    def _node(self, name: str) -> Node:
        for node in self.network.nodes if self.network else []:
            if node.name == name:
                return node
        raise ps.ServiceError(f"no node {name!r} in this cluster (nodes: {', '.join(self.nodes)})")

    def _start_slurmd(self, node: Node) -> None:
        (self.root / "spool" / "d" / node.name).mkdir(parents=True, exist_ok=True)
        assert self.network is not None
        self._spawn(f"slurmd-{node.name}", [*self.network.exec_prefix(node), ps.which("slurmd"), "-D",
                                            "-N", node.name, "-f", str(self.conf)])  # fmt: skip

    def kill_node(self, name: str) -> list[int]:
        """A node "crashes": SIGKILL its slurmd and every process on it (job steps included)."""
        node = self._node(name)
        assert self.network is not None
        pids = netns_pids(node.netns)
        ps.kill_all(pids, grace=0)
        proc = self._spawned.pop(f"slurmd-{name}", None)
        if proc is not None:
            proc.wait(timeout=10)  # reap it
        return pids

    def restart_node(self, name: str, timeout: float = 90) -> None:
        """Start a killed node's slurmd again and wait until every node is idle."""
        self._start_slurmd(self._node(name))
        self._wait(f"node {name} back in service", self._node_idle, time.monotonic() + timeout)

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` as slurmctld sees them (``idle``, ``allocated``, ``down*``, ...)."""
        out = self._out(["sinfo", "-h", "-N", "-o", "%N %T"])
        return dict(line.split(None, 1) for line in out.strip().splitlines() if " " in line)

    def status(self) -> str:
        """Human-readable state: daemons alive and `sinfo` output."""
        names = sorted(ps.proc_name(p) for p in ps.marked_pids(MARKER, str(self.root)))
        if not names:
            return f"no SLURM test cluster running under {self.root}"
        sinfo = self._out(["sinfo", "-N", "-o", "%N %P %T %c %m"]) if self._ok(["sinfo"]) else ""
        return f"daemons: {' '.join(names)}\nSLURM_CONF={self.conf}\n{sinfo.strip()}"

    # -- internals ---------------------------------------------------------------------------

    def _stop_leftovers(self) -> None:
        """Stop this root's old daemons and those of dead sessions; skip ports still in use."""
        stale = [p for p in ps.marked_pids(MARKER) if not self._owned_by_live_session(p)]
        stale_roots = {ps.marker_value(p, MARKER) for p in stale}
        if stale:
            print(f"stopping leftover SLURM test daemons: {stale}", file=sys.stderr)
            ps.kill_all(ps.descendants(stale) + stale)
        for root in {*stale_roots, str(self.root)} - {None}:
            remove_recorded(Path(root) / "run" / "network")  # namespaces of a crashed cluster
        for pidfile in (self.root / "run").glob("*.pid"):
            pidfile.unlink()
        self.munge_socket.unlink(missing_ok=True)  # left by a killed munged; start-up waits for it
        # Another live cluster (a parallel test session, one started by hand) keeps its ports.
        first = self.ctld_port
        for _ in range(10):
            if all(ps.port_free(p) for p in self.ports):
                if self.network is not None:
                    self.network = self._network()
                    self.network.create()
                return
            self._set_ports(self.ctld_port + 10)
        raise ps.ServiceError(
            f"no four free ports on 127.0.0.1 in {first}..{first + 99}; "
            "stop what holds them or pass another port_base (--port-base)"
        )

    def _owned_by_live_session(self, pid: int) -> bool:
        root = Path(ps.marker_value(pid, MARKER) or "")
        if root == self.root:
            return False
        try:
            owner = int((root / "run" / "owner").read_text())
        except (OSError, ValueError):
            return False  # folder deleted: nobody can use or stop that cluster any more
        return owner == 0 or ps.alive(owner)  # 0: started by hand, lives until `down`

    def _write_files(self) -> None:
        for sub in ("etc", "munge", "mysql", "run", "log", "spool/ctld", *(f"spool/d/{n}" for n in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o755)  # munged insists on a socket dir reachable by everyone
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.conf.write_text(slurm_conf(self))
        (self.conf.parent / "plugstack.conf").write_text("")
        dbd = self.conf.parent / "slurmdbd.conf"
        dbd.write_text(slurmdbd_conf(self))
        dbd.chmod(0o600)  # slurmdbd refuses a world-readable file holding the DB password

    def _start_mariadb(self, deadline: float) -> None:
        datadir = self.root / "mysql" / "data"
        if not (datadir / "mysql").exists():
            ps.run_checked([ps.which("mariadb-install-db") or "mariadb-install-db", "--no-defaults",
                  "--user=root", f"--datadir={datadir}", "--auth-root-authentication-method=socket",
                  "--skip-test-db", *_INNODB_SMALL], timeout=120)  # fmt: skip
        self._spawn("mariadbd", [ps.which("mariadbd"), "--no-defaults", "--user=root",
                                 f"--datadir={datadir}", f"--socket={self.db_socket}",
                                 f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
                                 f"--port={self.db_port}", "--bind-address=127.0.0.1",
                                 "--skip-name-resolve", "--skip-log-bin",
                                 f"--log-error={self.logs / 'mariadbd.log'}",
                                 "--innodb-lock-wait-timeout=900", *_INNODB_SMALL])  # fmt: skip
        client = [ps.which("mariadb") or "mariadb", "--no-defaults", f"--socket={self.db_socket}"]
        self._wait("MariaDB", lambda: self._ok([*client, "-e", "select 1"]), deadline)
        grants = "".join(
            f"CREATE USER IF NOT EXISTS 'slurm'@'{host}' IDENTIFIED BY '{DB_PASSWORD}';"
            f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{host}';"
            for host in ("127.0.0.1", "localhost")
        )
        ps.run_checked([*client, "-e", grants])

    def _spawn(self, name: str, cmd: list[str | None]) -> None:
        if cmd[0] is None:
            raise ps.ServiceError(
                f"{name} is not installed (apt-get install -y {' '.join(PACKAGES)})"
            )
        env = {**os.environ, **self.env, MARKER: str(self.root)}
        log = open(self.logs / f"{name}.out", "ab")  # noqa: SIM115 - handed to the daemon
        with log:
            self._spawned[name] = subprocess.Popen([str(c) for c in cmd], env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # fmt: skip

    def _wait(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        while time.monotonic() < deadline:
            if ready():
                return
            self._check_daemons()
            time.sleep(0.25)
        raise ps.ServiceError(f"timed out waiting for {what}\n{self._log_tails()}")

    def _check_daemons(self) -> None:
        # The Popen handles, not the /proc marker: right after exec a process's environ can
        # still read empty, which made a daemon that had just started look gone.
        for name, proc in self._spawned.items():
            if proc.poll() is not None:
                raise ps.ServiceError(
                    f"{name} exited during start-up with status {proc.returncode}\n"
                    f"{self._log_tails([name]) or '(its logs are empty)'}"
                )

    def _log_tails(self, names: list[str] | None = None, lines: int = 12) -> str:
        """The last lines of the daemons' logs (all of them unless ``names``)."""
        parts = []
        for log in sorted(self.logs.iterdir()):
            text = ps.tail(log.read_text(errors="replace"), lines)
            if text and (names is None or log.stem in names):
                parts.append(f"--- {log} ---\n{text}")
        return "\n".join(parts)

    def _client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _ok(self, cmd: list[str]) -> bool:
        try:
            return subprocess.run(cmd, env=self._client_env(), capture_output=True,
                                  timeout=15).returncode == 0  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _out(self, cmd: list[str]) -> str:
        try:
            proc = subprocess.run(
                cmd, env=self._client_env(), capture_output=True, text=True, timeout=15
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return proc.stdout

    def _node_idle(self) -> bool:
        return self._out(["sinfo", "-h", "-N", "-o", "%T"]).split() == ["idle"] * self.num_nodes

    def _registered(self) -> bool:
        out = self._out(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster,controlport"])
        return f"{CLUSTER_NAME}|{self.ctld_port}" in out
