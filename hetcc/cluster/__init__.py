"""Running a bundle's stages in Ray actors, requests pipelined (docs/cluster.md). Needs Ray:
``pip install 'hetcc[ray]'``; importing this package does not import Ray."""
from hetcc.cluster.model import ClusterError, DistributedModel, distribute

__all__ = ["ClusterError", "DistributedModel", "distribute"]
