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

Each actor's compute threads (``FACEKIT_THREADS``) are its node's CPUs shared equally among the
run's actors on that node (capped by the driver's ``FACEKIT_THREADS`` when set), as local
``--workers`` does; each video records the threads it ran with (``cpu_threads``).
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

    cap = os.environ.get("FACEKIT_THREADS")  # the driver's cap applies on every node

    @ray.remote(num_cpus=1, num_gpus=n_gpu, max_restarts=0)
    class Worker:
        @staticmethod
        def _cfg(config):
            if n_gpu:  # Ray gives each actor one GPU, visible as cuda:0
                from dataclasses import replace

                return replace(config, device="cuda:0")
            return config

        def node(self):
            """(node id, CPUs this process may use there) for sharing them among the actors on it
            (the CPUs themselves, as local --workers shares them, not Ray's logical count)."""
            import ray as ray_

            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                cpus = os.cpu_count() or 1
            return ray_.get_runtime_context().get_node_id(), int(cpus)

        def ready(self, config, threads: int | None = None, others: dict | None = None):
            """Set this actor's FACEKIT_THREADS and load the models. ``threads``: its share, or None
            to compute it here from ``others`` (node id -> the run's other actors there: a replacement)."""
            from .engine import build_pipeline

            if threads is None:
                node = self.node()
                threads = thread_shares([node] * ((others or {}).get(node[0], 0) + 1), cap)[0]
            os.environ["FACEKIT_THREADS"] = str(threads)  # before any model makes its thread pools
            build_pipeline(self._cfg(config))  # models load here: missing weights, unusable GPU...
            return True

        def run(self, unit, config, out_path, dbg):
            return process_unit(unit, self._cfg(config), out_path, dbg)

    def one_line(e) -> str:
        cause = getattr(e, "cause", None) or e
        return f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}"

    n = max(1, min(cfg.workers, len(order)))
    actors = [Worker.remote() for _ in range(n)]
    unchecked: list = []  # replacements' ready() calls (a failure there shows in their videos)
    try:
        try:  # every actor loads its models before any video is sent: a node that cannot is one line
            # actor -> (node, CPUs); replacements are not added (their node is not waited for)
            where = dict(zip(actors, ray.get([a.node.remote() for a in actors])))
            ray.get([a.ready.remote(cfg, t) for a, t in zip(actors, thread_shares(list(where.values()), cap))])
        except ray.exceptions.RayError as e:
            raise ClusterError(f"a Ray worker cannot start: {one_line(e)}") from None
        pending: dict = {}  # object ref -> (unit, actor)
        todo = iter(order)

        def submit(actor) -> None:
            u = next(todo, None)
            if u is not None:
                pending[actor.run.remote(u, cfg, out, debug)] = (u, actor)

        for a in actors:
            submit(a)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            u, a = pending.pop(ref)
            try:
                r = ray.get(ref)
            except ray.exceptions.RayActorError as e:  # the worker process died (OOM kill, node lost)
                r = _failed(u, out, f"the Ray worker processing it died ({one_line(e)})")
                where.pop(a, None)
                others: dict = {}
                for node, _ in where.values():
                    others[node] = others.get(node, 0) + 1
                a = Worker.remote()  # a replacement: shares its node's CPUs and loads its models, then
                actors.append(a)   # takes the next video (an actor runs its calls in order; nothing waits here)
                unchecked.append(a.ready.remote(cfg, None, others))
            except ray.exceptions.RayError as e:
                r = _failed(u, out, f"internal error on a Ray worker: {one_line(e)}")
            handle(r)
            if stopped():
                return
            submit(a)
    finally:
        for ref in unchecked:  # retrieved, so that Ray does not print them as unhandled errors
            try:
                ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 - not finished, or failed: its videos said why
                pass
        for a in actors:
            ray.kill(a)


def thread_shares(nodes, cap: str | None = None) -> list[int]:
    """FACEKIT_THREADS of each actor: its node's CPUs (at most ``cap``, the driver's FACEKIT_THREADS)
    shared equally among the actors of this run on that node. ``nodes``: [(node id, node CPUs)]
    per actor. As local ``--workers N``, which gives each of N processes 1/N of the CPUs."""
    count: dict = {}
    for node, _ in nodes:
        count[node] = count.get(node, 0) + 1
    limit = int(cap) if cap and cap.strip().isdigit() and int(cap) >= 1 else None
    return [max(1, (min(cpus, limit) if limit else cpus) // count[node]) for node, cpus in nodes]


def _failed(unit, out: str, cause: str):
    """A failure the worker could not record itself: recorded here, never over finished results."""
    from . import store
    from .engine import Result, _old_video
    from .version import __version__

    shard = store.shards_dir(out) / store.shard_name(unit.key)
    old = _old_video(shard)[0]
    if old and old.get("status") == store.STATUS_DONE:
        cause += " (the results of an earlier run of this video are kept)"
    else:
        try:
            store.write_failure(out, unit.key, {"key": unit.key, "source_path": unit.path, "error": cause,
                                                "facekit_version": __version__})
        except OSError:
            pass
    return Result(unit.key, unit.path, "failed", error=cause)
