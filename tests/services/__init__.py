"""Real services the integration tests start themselves: a single-node SLURM cluster and an
``mlflow server``. See README.md in this folder."""

from .mlflow_server import MlflowServer
from .processes import ServiceError
from .slurm import SlurmCluster

__all__ = ["MlflowServer", "ServiceError", "SlurmCluster"]
