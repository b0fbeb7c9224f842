"""Many machines: the Ray backend (``--backend ray``).

``facekit extract videos/ -o /shared/feats.h5 --backend ray --ray-address HEAD:6379 --workers 16``
connects to a running Ray cluster and starts ``--workers`` actors (one GPU each with a CUDA
``--device``), each a facekit worker that loads its models once and processes videos pulled from
one queue, largest first; each actor writes its own shard files straight into the store, so the
store must be on a file system every node sees (as for SLURM job arrays). The driver (the machine
running the command) collects results, shows progress and rebuilds the index. Results are identical
to a local run: the same ``process_unit`` runs on each video.

Without ``--ray-address`` (and no ``RAY_ADDRESS`` in the environment) a local Ray instance is
started with ``--workers`` CPUs, which is mostly useful for testing.
"""

from __future__ import annotations

import os


class ClusterError(Exception):
    """The cluster cannot be used (Ray missing, no cluster at the address, not enough resources)."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("--backend ray needs Ray: pip install 'facekit[ray]' (or pip install ray)") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {why} (is `ray start --head` "
                           f"running there?)") from None


def gpus_per_worker(cfg) -> float:
    return 1.0 if str(cfg.device).startswith("cuda") else 0.0


def run_ray(order, cfg, out: str, debug: bool, handle, stopped) -> None:
    """Process the units ``order`` on Ray actors; ``handle(result)`` for each, in completion order.

    ``stopped()`` returning True stops dispatching (e.g. the disk is full); the actors are killed.
    """
    ray = _ray()
    from .engine import process_unit

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        _check_reachable(address)  # Ray itself retries an unreachable address for minutes
    try:
        if not ray.is_initialized():
            kw = {"address": address} if address else {"num_cpus": max(cfg.workers, 1)}
            ray.init(log_to_driver=False, include_dashboard=False, configure_logging=False, **kw)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError...: one line for the user
        raise ClusterError(f"cannot connect to the Ray cluster at {address or '(local)'}: "
                           f"{' '.join(str(e).split())[:300]}") from None
    n_gpu = gpus_per_worker(cfg)
    if n_gpu:
        have = ray.cluster_resources().get("GPU", 0)
        if have < cfg.workers * n_gpu:
            raise ClusterError(f"--device {cfg.device} with --workers {cfg.workers}: the Ray cluster has "
                               f"{have:g} GPUs")

    @ray.remote(num_cpus=1, num_gpus=n_gpu, max_restarts=0)
    class Worker:
        def run(self, unit, config, out_path, dbg):
            wcfg = config
            if n_gpu:  # Ray gives each actor one GPU, visible as cuda:0
                from dataclasses import replace

                wcfg = replace(config, device="cuda:0")
            return process_unit(unit, wcfg, out_path, dbg)

    from ray.util import ActorPool

    actors = [Worker.remote() for _ in range(max(1, min(cfg.workers, len(order))))]
    pool = ActorPool(actors)
    try:
        pending = iter(order)
        # keep every actor busy, one video at a time (a shared queue, largest first)
        for u in pending:
            if not pool.has_free():
                handle(pool.get_next_unordered())
                if stopped():
                    return
            pool.submit(lambda a, unit: a.run.remote(unit, cfg, out, debug), u)
        while pool.has_next():
            handle(pool.get_next_unordered())
            if stopped():
                return
    finally:
        for a in actors:
            ray.kill(a)
