"""``bench tune`` in this process, or as ``--workers N`` processes on Slurm or Ray sharing each study.

Every worker runs the same ``search.tune`` as a local command and adds ``--trials`` trials to
each study, through a storage every node reaches (a journal file on a shared file system, or
PostgreSQL). A worker's trials record its id; a worker requeued after a preemption adds only
the trials it still owes, and the trial it was running is retried (see ``liveness``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import optuna
from rich.text import Text

from bench.data.resolve import resolve_dataset
from bench.errors import BenchError
from bench.experiments.executors import resources
from bench.experiments.options import RunOptions
from bench.experiments.tune.liveness import WORKER_ENV
from bench.experiments.tune.search import EXIT_PREEMPTED, check_buildable, check_request, tune
from bench.experiments.tune.studies import best_trial, open_storage, study_dir, study_name, summary
from bench.urls import display_url


@dataclass(frozen=True)
class TuneWorker:
    """What one worker needs: the command's options as they travel (``RunOptions.for_workers``) and
    ``tune``'s arguments."""

    models: list[str]
    options: RunOptions
    kwargs: dict = field(default_factory=dict)

    def run(self, worker: str) -> int:
        os.environ[WORKER_ENV] = worker
        return tune(self.models, self.options, **self.kwargs)


def launch(models: list[str], opts: RunOptions, **kwargs) -> int:
    """``bench tune``: locally, or ``opts.executor.workers`` workers on Slurm or Ray; the exit status."""
    ex = opts.executor
    if ex.name == "local":
        return tune(models, opts, **kwargs)
    resources.check(ex)
    storage = kwargs.get("storage")
    if not storage or storage.startswith("sqlite"):
        raise BenchError(f"--executor {ex.name}: the workers share each study through --storage journal:FILE (on a "
                         "file system every node sees) or postgresql://...; SQLite is for workers on one machine")
    check_request(models, kwargs.get("n_trials", 10), kwargs.get("timeout"), kwargs.get("studies"))
    proto = opts.load_protocol()
    ds = resolve_dataset(opts.dataset or "synthetic", say=opts.say, data_root=opts.data_root, fold=opts.fold)
    check_buildable(models, proto, ds)  # here, not in N workers
    open_storage(storage)  # a bad URL or an unreachable server fails here, not in N workers
    names = kwargs.get("studies") or [study_name(ds.name, m, proto) for m in models]
    worker = TuneWorker(models, opts.for_workers(), kwargs)
    results = worker.options.run.results
    n = ex.workers
    opts.say(f"{n} worker{'s' if n != 1 else ''} on {ex.name}, each adding {kwargs.get('n_trials', 10)} trials to "
             f"{', '.join(names)}; storage {display_url(storage)}")
    if ex.name == "slurm":
        from bench.experiments.executors import slurm

        ids, described = slurm.submit(slurm_tune, [worker] * n, opts, proto, "segbench-tune")
        opts.say(f"submitted as Slurm job {ids[0][0].split('_')[0]} ({described}); logs: "
                 f"{results / slurm.JOBS_DIR / ids[0][0].split('_')[0]}/")
        if not ex.wait:
            opts.say("run with --wait to block until the workers end; the study grows meanwhile "
                     f"(optuna-dashboard {display_url(storage).removeprefix('journal:')})")
            return 0
        states = slurm.wait({task: f"tune worker {i}" for i, (task, _) in enumerate(ids)}, opts.say)
        failed = [t for t, state in states.items() if state not in ("COMPLETED",)]
    else:
        failed = _on_ray(worker, n, opts, proto)
    for task in failed:
        opts.say(Text.assemble((f"worker {task} did not finish", "red"), "; its trials so far are in the study"))
    return _summaries(models, names, storage, results, opts) or (1 if failed else 0)


def _on_ray(worker: TuneWorker, n: int, opts: RunOptions, proto) -> list[str]:
    from bench.experiments.executors.ray import capacity, ray_session, remote

    ex = opts.executor
    gpus, cpus = resources.gpus_per_run(ex, opts.run.device, proto), resources.cpus_per_run(ex, proto)
    with ray_session(opts) as ray:
        opts.say(f"Ray: {capacity(ray, gpus, cpus)}")
        refs = [remote(ray, ray_tune, gpus, cpus).remote(worker) for _ in range(n)]
        failed = []
        for i, ref in enumerate(refs):
            try:
                ray.get(ref)
            except Exception as e:
                failed.append(f"ray-{i} ({type(e).__name__})")
    return failed


def _summaries(models: list[str], names: list[str], storage: str, results, opts: RunOptions) -> int:
    """Each study's trials table and plots, and one line each; 1 if a study has no completed trial."""
    from bench.experiments.tune.outputs import write_outputs

    store = open_storage(storage, create=False)
    code = 0
    for model, name in zip(models, names, strict=True):
        study = optuna.load_study(study_name=name, storage=store)
        opts.say(summary(study, model))
        if best_trial(study) is None:
            code = 1
        outputs = write_outputs(study, study_dir(results, name), display_url(storage))
        opts.say(f"  trials table and plots: {', '.join(str(p) for p in outputs)}")
    return code


def slurm_tune(worker: TuneWorker) -> int:
    """A Slurm array task: one worker, requeued on the warning signal (then it adds what it still owes)."""
    from bench.experiments.executors.common import set_threads
    from bench.experiments.executors.slurm import requeue_on_signal, requeue_self, slurm_where

    set_threads(int(os.environ.get("SLURM_CPUS_PER_TASK") or 0))
    requeue_on_signal()
    code = worker.run(slurm_where()["job_id"])
    if code == EXIT_PREEMPTED:
        requeue_self("preempted")
    return code


def ray_tune(worker: TuneWorker) -> int:
    """A Ray task: one worker (a retry after its worker died keeps the task id, so it adds only what it owes)."""
    from bench.experiments.executors.ray import ray_threads, ray_where

    ray_threads()
    return worker.run(f"ray-{ray_where()['task_id']}")
