"""Real services the integration tests start themselves: SLURM clusters (one node, or two in
network namespaces), an ``mlflow server`` and PostgreSQL. See README.md in this folder."""

from .mlflow_server import MlflowServer
from .postgres import PostgresServer
from .processes import ServiceError
from .slurm import SlurmCluster, worker_port_base

__all__ = ["MlflowServer", "PostgresServer", "ServiceError", "SlurmCluster", "worker_port_base"]
