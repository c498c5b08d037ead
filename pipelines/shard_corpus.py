"""Prefect flow ``shard-corpus``: image corpus -> verified WebDataset shards + manifest.

The flow runs the same stages as ``python -m shards build`` (``shards.build.build``); only the
mapper differs: each chunk of inputs and each shard is a Prefect task, retried on transient I/O
errors, and the task runner (threads by default) sets the parallelism. A rerun resumes: complete
chunks and verified shards are skipped, so retries and restarts are cheap.

    prefect deployment run shard-corpus/local --param sources='["data/div2k"]' --param output=runs/shards
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from shards.build import build, process_chunk, write_shard
from shards.process import BuildConfig

RETRY_DELAYS = [2, 10, 30]

process_chunk_task = task(process_chunk, name="process-chunk", retries=3, retry_delay_seconds=RETRY_DELAYS,
                          cache_policy=NO_CACHE)
write_shard_task = task(write_shard, name="write-shard", retries=3, retry_delay_seconds=RETRY_DELAYS,
                        cache_policy=NO_CACHE)
_TASKS = {process_chunk: process_chunk_task, write_shard: write_shard_task}


def prefect_map(fn: Callable, items: Iterable, *args) -> Iterator:
    """Mapper for :func:`shards.build.build` that fans ``fn`` out as Prefect tasks."""
    futures = _TASKS[fn].map(list(items), *[unmapped(a) for a in args])
    for future in futures:
        yield future.result()


def _summary(manifest) -> str:
    t = manifest.totals()
    rows = [("scanned", t["scanned"]), ("written", t["written"]), ("quarantined", t["quarantined"]),
            ("duplicates", t["duplicates"]), ("train samples", t["samples"]["train"]),
            ("val samples", t["samples"]["val"]), ("shards", sum(t["shards"].values())), ("bytes", t["bytes"])]
    text = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    if manifest.quarantine:
        text += "\n\n**Quarantined**\n\n" + "\n".join(f"- `{q['source']}`: {q['reason']}" for q in manifest.quarantine)
    return text


@flow(name="shard-corpus", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
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
) -> dict:
    """Build (or resume) shards of ``sources`` in ``output``; returns the manifest totals.

    Use ``shard_corpus.with_options(task_runner=...)`` for another parallelism (e.g. a Dask runner).
    """
    cfg = BuildConfig(max_count=max_count, max_bytes=max_bytes, split_val=split_val, min_side=min_side,
                      max_pixels=max_pixels, policy=policy, resize_shorter=resize_shorter, max_shorter=max_shorter,
                      patch_size=patch_size, chunk_size=chunk_size)
    manifest = build(sources, output, cfg, mapper=prefect_map, keep_staging=keep_staging)
    totals = manifest.totals()
    print(f"shard-corpus: {totals}")
    create_markdown_artifact(_summary(manifest), key="shard-corpus-summary", description=f"Shards in {output}")
    return {"manifest": f"{output}/manifest.json", "fingerprint": manifest.fingerprint, **totals}
