"""The configuration files of the SLURM test cluster (``slurm.py``): slurm.conf and slurmdbd.conf.

Kept apart from the daemons' lifecycle so each can be read on its own: everything a test relies
on in SLURM's behaviour (requeue delays, dependency handling, node-down timeout, job ids that
never repeat across clusters) is set here, with the reason beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .slurm import SlurmCluster

CLUSTER_NAME = "scaling"
PARTITION = "debug"
DB_PASSWORD = "scaling-test"  # MariaDB listens on 127.0.0.1 only and lives as long as the cluster
PORT_BASE = 16817  # the first cluster's slurmctld port; each further block of 10 is another cluster's


def slurm_conf(c: SlurmCluster) -> str:
    """slurm.conf of cluster ``c``: every file under its root, its own ports, accounting on."""
    r = c.root
    return f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={c.node}({c.ctld_addr})
SlurmctldPort={c.ctld_port}
SlurmdPort={c.slurmd_port}
{_bind_line(c)}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job otherwise waits for the default 120 s credential lifetime before restarting.
AuthInfo=socket={c.munge_socket},cred_expire=10
StateSaveLocation={r}/spool/ctld
SlurmdSpoolDir={r}/spool/d/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
PlugStackConfig={r}/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
# Without this an `afterok` dependant of a failed job stays pending forever.
DependencyParameters=kill_invalid_depend
JobRequeue=1
# Clusters live side by side in one test session, and submitit caches job states by job id in
# the process: ids must not repeat across them.
FirstJobId={_first_job_id(c)}
MinJobAge=10
KillWait=2
Waittime=0
InactiveLimit=0
SlurmctldTimeout=10
# A lost node is marked down after this long (a node-failure test waits for it).
SlurmdTimeout=20
MessageTimeout=10
# submitit reads job states from sacct: without accounting a cancelled job never reads as done.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={c.dbd_port}
# The munge socket for talking to slurmdbd (AuthInfo's socket covers the other connections).
AccountingStoragePass={c.munge_socket}
JobCompType=jobcomp/none
{_node_lines(c)}
PartitionName={PARTITION} Nodes={",".join(c.nodes)} Default=YES MaxTime=INFINITE State=UP
"""


def _first_job_id(c: SlurmCluster) -> int:
    block = (c.ctld_port - PORT_BASE) // 10
    return 1 + 100_000 * block + (500_000 if c.network else 0)


def _bind_line(c: SlurmCluster) -> str:
    if c.network is None:
        return ("# slurmd binds to NodeAddr only (slurmctld and slurmdbd of 22.05 still listen on any address).\n"
                "CommunicationParameters=NoInAddrAny")
    # Nodes have namespaces of their own; an srun on this host must listen where they reach it.
    return "# every slurmd is alone in its network namespace: binding any address is fine there"


def _node_lines(c: SlurmCluster) -> str:
    memory = _memory_mb() // c.num_nodes
    if c.network is None:
        return f"NodeName={c.node} NodeAddr=127.0.0.1 CPUs={c.cpus} RealMemory={memory} State=UNKNOWN"
    return "\n".join(f"NodeName={n.name} NodeAddr={n.addr} CPUs={c.cpus} RealMemory={memory} State=UNKNOWN"
                     for n in c.network.nodes)  # fmt: skip


def slurmdbd_conf(c: SlurmCluster) -> str:
    """slurmdbd.conf of cluster ``c``: accounting in its MariaDB on 127.0.0.1."""
    r = c.root
    return f"""\
AuthType=auth/munge
AuthInfo=socket={c.munge_socket}
DbdAddr=127.0.0.1
DbdHost={c.node}
DbdPort={c.dbd_port}
SlurmUser=root
PidFile={r}/run/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={c.db_port}
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
"""


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(int(line.split()[1]) // 1024 - 1024, 512)  # leave 1 GiB to the system
    return 1024
