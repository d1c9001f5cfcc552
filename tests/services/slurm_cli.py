"""Start, inspect or stop the SLURM test cluster by hand (root only): ``scripts/slurm-cluster``.

    python tests/services/slurm_cli.py up --root DIR [--nodes 2]  # prints `export SLURM_CONF=...`
    python tests/services/slurm_cli.py status --root DIR
    python tests/services/slurm_cli.py down --root DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__:
    from . import processes as ps
    from .slurm import SlurmCluster
else:  # run as a script
    import processes as ps
    from slurm import SlurmCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start, inspect or stop the SLURM test cluster (root only; one node, or --nodes N). "
        "After `up`, run `export SLURM_CONF=<root>/etc/slurm.conf` to use sbatch/squeue/sacct "
        "or `--executor slurm` against it."
    )
    parser.add_argument(
        "action",
        choices=["up", "down", "status"],
        help="up: start (restarts the cluster of this root if it runs), down: stop, status: show",
    )
    parser.add_argument("--root", type=Path, required=True, help="folder for configs, logs, state")
    parser.add_argument(
        "--port-base", type=int, default=16817, help="first of four ports (default 16817)"
    )
    parser.add_argument("--nodes", type=int, default=1,
                        help="1: slurmd on this host; N > 1: N nodes sn1..snN, each in its own network "
                        "namespace on a bridge 10.213.x.0/24 made for the cluster (default 1)")  # fmt: skip
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.root, port_base=args.port_base, nodes=args.nodes)
    try:
        if args.action == "up":
            started = time.monotonic()
            cluster.start(detached=True)
            print(f"SLURM test cluster up in {time.monotonic() - started:.1f} s", file=sys.stderr)
            print(f"export SLURM_CONF={cluster.conf}")
        elif args.action == "down":
            cluster.stop()
        else:
            print(cluster.status())
    except ps.ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
