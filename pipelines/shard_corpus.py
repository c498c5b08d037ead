"""Prefect flow ``shard-corpus``: image corpus -> verified WebDataset shards + manifest.

The flow runs the same stages as ``python -m shards build`` (``shards.build.build``); only the
mapper differs. Each chunk of inputs and each shard is one unit of work, retried on transient I/O
errors, and the ``runner`` parameter says where it runs:

* ``threads`` (default): Prefect tasks on threads of the flow's process (image decoding holds the GIL
  part of the time);
* ``dask``: a Dask cluster (``prefect-dask``): ``workers`` local worker processes, or the running
  scheduler at ``dask_address``;
* ``slurm``: Dask workers as Slurm jobs (``dask-jobqueue``'s ``SLURMCluster``), one per job, with
  ``slurm_options`` such as ``queue``, ``account``, ``cores``, ``memory``, ``walltime``.

On a Dask cluster the units go to the cluster's client as plain Dask tasks, not as Prefect tasks. A
Prefect task run per chunk costs the flow's process memory for every chunk until the cluster closes,
and the Prefect server one task run per chunk. At a million chunks both are too much, and Dask
already reschedules work lost with a worker. ``benchmarks/scale.py`` measures both.

The output must be on a filesystem every worker shares. A rerun resumes: complete chunks and
verified shards are skipped, so retries and restarts are cheap; every runner writes the same bytes.

    prefect deployment run shard-corpus/local --param sources='["data/div2k"]' --param output=runs/shards
    prefect deployment run shard-corpus/local --param runner=dask --param workers=8 ...
"""

from __future__ import annotations

import inspect
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import dask
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from shards.build import build, process_chunk, write_shard
from shards.process import BuildConfig

RETRY_DELAYS = [2, 10, 30]

process_chunk_task = task(process_chunk, name="process-chunk", retries=3, retry_delay_seconds=RETRY_DELAYS,
                          cache_policy=NO_CACHE)
write_shard_task = task(write_shard, name="write-shard", retries=3, retry_delay_seconds=RETRY_DELAYS,
                        cache_policy=NO_CACHE)
_TASKS = {process_chunk: process_chunk_task, write_shard: write_shard_task}


RUNNERS = ("threads", "dask", "slurm")


def make_task_runner(runner: str, workers: int, dask_address: str | None = None,
                     slurm_options: dict | None = None) -> TaskRunner:
    """The Prefect task runner of ``shard-corpus``'s ``runner`` parameter (see the module's docstring).

    Raises:
        ValueError: an unknown runner, fewer than one worker, or an address with a runner that
            starts its own workers.
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    if dask_address and runner != "dask":
        raise ValueError("dask_address needs runner='dask' (a running Dask scheduler)")
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    if runner == "dask":
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    # one single-threaded worker per Slurm job: the unit the cluster schedules and may preempt
    options = {"cores": 1, "processes": 1, "memory": "2GB", "walltime": "04:00:00", "job_name": "cdc-shards",
               **(slurm_options or {})}
    return DaskTaskRunner(cluster_class="dask_jobqueue.SLURMCluster", cluster_kwargs={**options, "n_workers": workers})


def run_packed(payload: bytes):
    """Run a pickled ``(fn, item, args)`` on a Dask worker, retrying a failure after each of
    ``RETRY_DELAYS`` seconds (transient storage errors), as the Prefect tasks do.

    The arguments travel pickled, as one bytes object: the in-process scheduler unpickles a task's
    arguments into objects, and a shard plan is thousands of them (measured: the flow's process grows
    half as fast per image this way).
    """
    fn, item, args = pickle.loads(payload)
    for delay in RETRY_DELAYS:
        try:
            return fn(item, *args)
        except Exception as exc:  # what a Prefect task retries: any failure
            print(f"shard-corpus: {fn.__name__} failed ({exc}); trying again in {delay} s", file=sys.stderr)
            time.sleep(delay)
    return fn(item, *args)


def runner_map(runner: TaskRunner, window: int) -> Callable[..., Iterator]:
    """A mapper for ``shards.build.build`` that runs ``fn`` on ``runner``, at most ``window`` at a time
    (the inputs are consumed lazily), and yields the results in order: Prefect tasks on a thread
    runner, plain Dask tasks on a Dask one (see the module's docstring)."""
    from prefect_dask import DaskTaskRunner

    def mapper(fn: Callable, items: Iterable, *args) -> Iterator:
        names = list(inspect.signature(fn).parameters)

        def submit(item):
            if isinstance(runner, DaskTaskRunner):
                return runner.client.submit(run_packed, pickle.dumps((fn, item, args)), pure=False)
            return runner.submit(_TASKS[fn], dict(zip(names, (item, *args), strict=True)))

        pending: deque = deque()
        for item in items:
            pending.append(submit(item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    return mapper


def _summary(manifest) -> str:
    t = manifest.totals()
    rows = [("scanned", t["scanned"]), ("written", t["written"]), ("quarantined", t["quarantined"]),
            ("duplicates", t["duplicates"]), ("train samples", t["samples"]["train"]),
            ("val samples", t["samples"]["val"]), ("shards", sum(t["shards"].values())), ("bytes", t["bytes"])]
    text = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    if manifest.quarantine:
        text += "\n\n**Quarantined**\n\n" + "\n".join(f"- `{q['source']}`: {q['reason']}" for q in manifest.quarantine)
    return text


@flow(name="shard-corpus", log_prints=True)
def shard_corpus(
    sources: list[str],
    output: str,
    max_count: int = 1000,
    max_bytes: int = 512 * 2**20,
    split_val: float = 0.0,
    min_side: int = 64,
    max_pixels: int = 16384 * 16384,
    policy: str = "keep",
    resize_shorter: int | None = None,
    max_shorter: int | None = None,
    patch_size: int | None = None,
    chunk_size: int = 256,
    keep_staging: bool = False,
    runner: str = "threads",
    workers: int = 4,
    dask_address: str | None = None,
    slurm_options: dict | None = None,
) -> dict:
    """Build (or resume) shards of ``sources`` in ``output``; returns the manifest totals.

    Args:
        sources, output, max_count ... keep_staging: as ``python -m shards build`` (see its ``--help``).
        runner: ``threads``, ``dask`` or ``slurm``: where the chunk and shard tasks run.
        workers: threads, Dask worker processes, or Slurm jobs of one Dask worker each.
        dask_address: a running Dask scheduler (``tcp://host:8786``) for ``runner="dask"``.
        slurm_options: ``dask_jobqueue.SLURMCluster`` options for ``runner="slurm"``
            (``queue``, ``account``, ``cores``, ``memory``, ``walltime``, ``job_extra_directives``, ...).
    """
    cfg = BuildConfig(max_count=max_count, max_bytes=max_bytes, split_val=split_val, min_side=min_side,
                      max_pixels=max_pixels, policy=policy, resize_shorter=resize_shorter, max_shorter=max_shorter,
                      patch_size=patch_size, chunk_size=chunk_size)
    # Dask keeps the last 1,000 messages of every stream for debugging, each with its task's arguments:
    # megabytes of shard plans in the flow's process (client and in-process scheduler) for nothing.
    # Importing distributed first loads the defaults that this setting joins.
    import distributed  # noqa: F401

    with dask.config.set({"distributed.admin.low-level-log-length": 0}), \
            make_task_runner(runner, workers, dask_address, slurm_options) as task_runner:
        print(f"shard-corpus: tasks on {runner} ({workers} worker(s){f' at {dask_address}' if dask_address else ''})")
        manifest = build(sources, output, cfg, mapper=runner_map(task_runner, 2 * workers), keep_staging=keep_staging)
    totals = manifest.totals()
    print(f"shard-corpus: {totals}")
    create_markdown_artifact(_summary(manifest), key="shard-corpus-summary", description=f"Shards in {output}")
    return {"manifest": f"{output}/manifest.json", "fingerprint": manifest.fingerprint, **totals}
