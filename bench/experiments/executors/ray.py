"""``--executor ray``: one Ray task per run, on a Ray cluster or on a Ray started for the command.

Each task asks for ``--gpus-per-run`` GPUs and ``--cpus-per-run`` CPUs, so Ray places as many
runs at once as the cluster holds (a workstation with 8 GPUs runs 8, one per GPU: Ray sets
``CUDA_VISIBLE_DEVICES`` of each task). The cluster is the one at ``--ray-address`` or
``$RAY_ADDRESS``; without either, a Ray started here for the command and stopped after it.

A task whose worker dies (out of memory, a node lost) or is interrupted is retried up to
``RETRIES`` times, resuming from the run's checkpoint; after that the run is recorded as failed.
The command waits for every task: Ray tasks end with the process that submitted them.
"""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager

from bench.engine.runner import Outcome
from bench.engine.runs import RunSpec
from bench.engine.train import Interrupted
from bench.errors import BenchError
from bench.experiments.executors import resources
from bench.experiments.executors.common import RunJob, mark_failed, plan, run_here, say
from bench.experiments.options import RunOptions
from bench.protocol import Protocol

RETRIES = 2


def _ray():
    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'segbench[ray]'") from None
    return ray


@contextmanager
def ray_session(opts: RunOptions):
    """Ray, connected to the chosen cluster or started on this machine for the command."""
    ray = _ray()
    address = opts.executor.ray_address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BenchError(f"--executor ray: cannot reach a Ray cluster at {address}: "
                             f"{str(e).strip().splitlines()[0]}") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def capacity(ray, gpus: int, cpus: int) -> str:
    """The cluster's size as a phrase; an error if one run asks more than it has."""
    have = ray.cluster_resources()
    n_cpu, n_gpu = int(have.get("CPU", 0)), int(have.get("GPU", 0))
    if gpus > n_gpu:
        raise BenchError(f"--gpus-per-run {gpus}: the Ray cluster has {n_gpu} GPU{'s' if n_gpu != 1 else ''} "
                         "(use --gpus-per-run 0 to run on CPUs)")
    if cpus > n_cpu:
        raise BenchError(f"--cpus-per-run {cpus}: the Ray cluster has {n_cpu} CPUs")
    return f"{n_cpu} CPUs, {n_gpu} GPUs"


def remote(ray, fn, gpus: int, cpus: int):
    """``fn`` as a Ray task with its resources, retried on a dead worker or an interruption."""
    return ray.remote(fn).options(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES,
                                  retry_exceptions=[Interrupted])


def execute_ray(jobs: list[tuple[RunSpec, Protocol]], ds, opts: RunOptions) -> list[Outcome]:
    """Every run as a Ray task; the outcomes, in order, once all have ended."""
    planned = plan(jobs, ds, opts)
    outcomes: dict[int, Outcome] = {i: o for i, o in enumerate(planned) if isinstance(o, Outcome)}
    for o in outcomes.values():
        opts.say(f"{o.run.model} seed {o.run.seed}: {o.status} ({o.message}) -> {o.path}")
    todo = {i: p for i, p in enumerate(planned) if isinstance(p, RunJob)}
    if not todo:
        return [outcomes[i] for i in range(len(planned))]
    ex = opts.executor
    proto = next(iter(todo.values())).protocol
    gpus = resources.gpus_per_run(ex, opts.run.device, proto)
    cpus = {i: resources.cpus_per_run(ex, job.protocol) for i, job in todo.items()}  # threads may differ
    with ray_session(opts) as ray:
        where = opts.executor.ray_address or os.environ.get("RAY_ADDRESS") or "started on this machine"
        opts.say(f"Ray ({where}: {capacity(ray, gpus, max(cpus.values()))}): {_n(len(todo), 'run')} as tasks, "
                 f"per run {_n(gpus, 'GPU')} and {'/'.join(map(str, sorted(set(cpus.values()))))} CPU"
                 f"{'s' if max(cpus.values()) != 1 else ''}, up to {RETRIES} retries each")
        refs = {remote(ray, ray_run, gpus, cpus[i]).remote(job): i for i, job in todo.items()}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = refs[ref]
                    try:
                        outcomes[i] = ray.get(ref)
                    except Exception as e:  # the worker died RETRIES + 1 times, or the task raised
                        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        outcomes[i] = mark_failed(todo[i], f"Ray task failed ({type(e).__name__}): {why}")
                    out = outcomes[i]
                    opts.say(f"{todo[i].name}: {out.status}{f' ({out.message})' if out.message else ''} -> {out.path}")
        except KeyboardInterrupt:
            raise Interrupted("the Ray tasks were stopped with the command") from None
    return [outcomes[i] for i in range(len(planned))]


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'s' if count != 1 else ''}"


def ray_where() -> dict:
    import ray

    ctx = ray.get_runtime_context()
    return {"name": "ray", "node_id": ctx.get_node_id(), "node": socket.gethostname(), "task_id": ctx.get_task_id(),
            "gpus": ctx.get_accelerator_ids().get("GPU", [])}


def ray_threads(workers: int = 0) -> None:
    """The task's torch threads: its CPUs less the data-loader workers' (Ray puts the CPUs in
    OMP_NUM_THREADS unless the driver's environment had it, but torch may have started its pool
    before). A run on a CPU then uses its protocol's count (``numerics.threads``)."""
    import ray
    import torch

    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, cpus - workers)))


def ray_run(job: RunJob) -> Outcome:
    """A Ray task: one run through the engine, in its run folder."""
    ray_threads(job.protocol.num_workers)
    where = ray_where()
    say(f"{job.name}: Ray task {where['task_id']} on {where['node']} -> {job.path}")
    return run_here(job, where)
