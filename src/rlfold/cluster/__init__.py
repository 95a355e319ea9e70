"""Cluster layer: joining or starting a Ray cluster on loopback, worker placement, shutting down what rlfold started."""

from rlfold.cluster.ray_cluster import (actor_options, connect, import_ray, kill_actors, release_placement_groups,
                                        shutdown_if_started)

__all__ = ["actor_options", "connect", "import_ray", "kill_actors", "release_placement_groups", "shutdown_if_started"]
