"""The Ray cluster of a run: join one (``ray.address``) or start a small local one on loopback, and place workers.

A cluster rlfold started is shut down at the end of the run (``shutdown_if_started``, also at process exit,
so an error or Ctrl-C stops it too); a cluster that was already running, or that this process had already
initialised (a test's module-scoped cluster), is left alone.
"""

from __future__ import annotations

import atexit
import os
from types import ModuleType
from typing import Any

from rlfold.core.errors import ConfigError

# Every Ray listener on 127.0.0.1, no usage report (set before ray is imported or started).
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
_STATE: dict[str, Any] = {"started": False, "placement": {}}


def import_ray(what: str = "ray") -> ModuleType:
    """The ``ray`` module, or a ConfigError naming the extra that installs it."""
    for key, value in _LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"{what}: Ray is not installed; install it with pip install 'rlfold[ray]'") from exc
    return ray


def connect(cfg: Any) -> ModuleType:
    """Initialise Ray for ``cfg`` (a ``RayConfig``): reuse this process's connection, join ``cfg.address``,
    or start a local cluster of ``cfg.num_cpus`` CPUs; returns the ``ray`` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    common = {"include_dashboard": False, "log_to_driver": cfg.log_to_driver, "configure_logging": False}
    try:
        if cfg.address is None:
            ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, object_store_memory=cfg.object_store_mb * 2**20,
                     _node_ip_address="127.0.0.1", **common)
            _STATE["started"] = True
            atexit.register(shutdown_if_started)
        else:
            ray.init(address=cfg.address, **common)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
        where = "start a local Ray cluster" if cfg.address is None else f"join the Ray cluster at {cfg.address!r}"
        raise ConfigError(f"ray.address: cannot {where}: {type(exc).__name__}: {exc}") from exc
    return ray


def shutdown_if_started() -> None:
    """Shut Ray down if this process started the cluster (idempotent; a joined cluster keeps running)."""
    if not _STATE["started"]:
        return
    _STATE["started"] = False
    _STATE["placement"].clear()
    import ray

    if ray.is_initialized():
        ray.shutdown()


def release_placement_groups() -> None:
    """Remove the placement groups made for the workers (their reserved CPUs and GPUs are free again)."""
    groups, _STATE["placement"] = list(_STATE["placement"].values()), {}
    if groups:
        from ray.util.placement_group import remove_placement_group

        for group in groups:
            remove_placement_group(group)


def _placement_group(ray: ModuleType, cfg: Any, role: str, bundle: dict[str, float], count: int) -> Any:
    """One placement group per role (``count`` bundles of ``bundle``, strategy ``cfg.placement``), made once."""
    key = (role, count, tuple(sorted(bundle.items())), cfg.placement)
    cache = _STATE["placement"]
    if key not in cache:
        from ray.util.placement_group import placement_group

        group = placement_group([dict(bundle) for _ in range(count)], strategy=cfg.placement.upper())
        ray.get(group.ready())
        cache[key] = group
    return cache[key]


def actor_options(cfg: Any, role: str, index: int, count: int) -> dict[str, Any]:
    """``.options(...)`` of worker ``index`` of ``count`` of ``role`` (``rollout`` or ``reward``): its CPUs and
    GPUs, and its bundle of the role's placement group when ``cfg.placement`` is set."""
    cpus = cfg.cpus_per_rollout_worker if role == "rollout" else cfg.cpus_per_reward_worker
    gpus = cfg.gpus_per_rollout_worker if role == "rollout" else 0.0
    opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if cfg.placement is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        import ray

        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        group = _placement_group(ray, cfg, role, bundle, count)
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=group,
                                                                       placement_group_bundle_index=index)
    return opts


def kill_actors(ray: Any, actors: list[Any]) -> None:
    """Stop the actors (quietly: at interpreter exit Ray may already be down)."""
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


__all__ = ["actor_options", "connect", "import_ray", "kill_actors", "release_placement_groups",
           "shutdown_if_started"]
