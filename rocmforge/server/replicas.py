"""``rocmforge serve MODEL --replicas N``: N engine replicas behind one OpenAI endpoint, through Ray Serve.

Ray Serve does the distributed part: its proxy listens on HOST:PORT (on every node that holds a
replica), routes each request to a replica (power of two choices on queue length) and routes around
a replica that dies while its controller starts a new one. Each replica is ``replica.EngineReplica``:
its own process, its own engine, the single-engine server's app unchanged.

Ray comes with the ``ray`` extra and is imported only here, only when replicas are asked for.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from ..errors import RocmforgeError
from .replica import EngineReplica, ReplicaOptions

log = logging.getLogger(__name__)

APP_NAME = "rocmforge"
DEPLOYMENT_NAME = "engine"
_DEFAULT_MAX_NUM_SEQS = 16                      # AsyncEngine's own default
# a local instance passes only requests and tokens through its object store, never weights
_LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
_HEALTH_CHECK_S = 2
_SHUTDOWN_S = 5                                 # per replica: engine thread stop + lifespan end


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas, and what Ray reserves for each."""
    replicas: int
    num_cpus: float
    num_gpus: int

    def needs(self) -> dict[str, float]:
        return {"CPU": self.replicas * self.num_cpus, "GPU": float(self.replicas * self.num_gpus)}

    def shortfall(self, resources: dict[str, float]) -> list[str]:
        """What the plan needs beyond ``resources`` (ray.cluster_resources()), as readable phrases."""
        return [f"{need:g} {kind} (the cluster has {resources.get(kind, 0):g})"
                for kind, need in self.needs().items() if need > resources.get(kind, 0)]


def import_ray():
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise RocmforgeError(f"rocmforge serve --replicas needs the ray extra ({exc.name} is missing): "
                             f"pip install 'rocmforge[ray]'") from None
    return ray, serve


def plan_for(device: str, replicas: int, replica_cpus: float, cluster_gpus: float) -> ReplicaPlan:
    """One GPU per replica on --device gpu (and on auto when the cluster has GPUs), else a CPU slice."""
    gpu = device == "gpu" or (device == "auto" and cluster_gpus >= 1)
    return ReplicaPlan(replicas=replicas, num_cpus=replica_cpus, num_gpus=1 if gpu else 0)


def deployment_options(plan: ReplicaPlan, options: ReplicaOptions) -> dict:
    threads = str(max(1, int(plan.num_cpus)))
    # BLAS and Numba would otherwise start a thread per core of the node in every replica
    env = {k: os.environ.get(k, threads) for k in ("ROCMFORGE_BLAS_THREADS", "NUMBA_NUM_THREADS")}
    return dict(
        name=DEPLOYMENT_NAME,
        num_replicas=plan.replicas,
        ray_actor_options={"num_cpus": plan.num_cpus, "num_gpus": plan.num_gpus, "runtime_env": {"env_vars": env}},
        # a replica takes as many requests as its engine batches at once; the rest wait at the proxy
        # for whichever replica frees a slot first, rather than in one replica's queue
        max_ongoing_requests=options.engine_kwargs.get("max_num_seqs", _DEFAULT_MAX_NUM_SEQS),
        # requests route around a dead replica at once; this is how soon a new one is started (Ray: 10 s)
        health_check_period_s=_HEALTH_CHECK_S,
        graceful_shutdown_timeout_s=_SHUTDOWN_S,
        graceful_shutdown_wait_loop_s=0.5,
    )


def serve_replicas(options: ReplicaOptions, *, replicas: int, host: str, port: int, ray_address: str | None = None,
                   replica_cpus: float = 1.0, log_level: str = "warning") -> int:
    """Start (or join) Ray, deploy the replicas, serve until SIGINT/SIGTERM, then tear down what was started."""
    ray, serve = import_ray()
    local = ray_address is None
    level = getattr(logging, log_level.upper())
    # "local" always starts a fresh instance: never join whatever cluster this machine ran last
    init = dict(address="local", object_store_memory=_LOCAL_OBJECT_STORE_BYTES) if local else dict(address=ray_address)
    ray.init(**init, include_dashboard=False, logging_level=level)
    _stop_on_signals()
    try:
        resources = ray.cluster_resources()
        plan = plan_for(options.device, replicas, replica_cpus, resources.get("GPU", 0))
        short = plan.shortfall(resources)
        if short and local:
            raise RocmforgeError(f"{replicas} replicas of {plan.num_cpus:g} CPU and {plan.num_gpus} GPU each need "
                                 f"{', '.join(short)}: lower --replicas or --replica-cpus")
        if short:
            log.warning("the replicas need %s; they wait until the cluster has room", ", ".join(short))
        logging_config = {"log_level": level, "enable_access_log": level <= logging.INFO}
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
        deployment = serve.deployment(serve.ingress()(EngineReplica), **deployment_options(plan, options))
        serve.run(deployment.bind(options), name=APP_NAME, route_prefix="/", logging_config=logging_config)
        where = "a local Ray instance" if local else f"the Ray cluster at {ray_address}"
        print(f"rocmforge: serving {options.model} as {options.served_model_name!r} with {replicas} replicas "
              f"({plan.num_cpus:g} CPU, {plan.num_gpus} GPU each) on {where} at http://{host}:{port}/v1",
              flush=True)
        while True:
            signal.pause()
    except _Stopped:
        pass
    finally:
        _tear_down(ray, serve, local)
    return 0


class _Stopped(BaseException):
    """SIGINT or SIGTERM: leave serving (or a startup still loading models) for the tear-down."""


def _stop_on_signals() -> None:
    # installed after ray.init, whose own SIGTERM handler kills the instance and exits 1 without
    # a word to Serve; the first signal stops us, later ones must not interrupt the tear-down
    def stop(*_):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        raise _Stopped

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _tear_down(ray, serve, local: bool) -> None:
    try:
        if local:
            serve.shutdown()            # every replica's lifespan ends: engines stop, blocks freed
        else:
            serve.delete(APP_NAME)      # someone else's cluster: remove only what we deployed
    except Exception:  # noqa: BLE001 - still let go of Ray below
        log.exception("Ray Serve did not shut down cleanly")
    finally:
        ray.shutdown()                  # a local instance's processes end with it
