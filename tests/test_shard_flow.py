"""The Prefect flow ``shard-corpus`` against a real (temporary) Prefect server."""

import pytest
from conftest import prefect_harness
from test_shards import photo_corpus

pytestmark = pytest.mark.slow


def test_flow_matches_the_cli_and_retries_transient_errors(tmp_path, monkeypatch):
    import shards.build
    from pipelines.shard_corpus import shard_corpus
    from shards.build import build
    from shards.manifest import Manifest
    from shards.process import BuildConfig

    corpus = photo_corpus(tmp_path / "c", copies=2)
    reference = build([str(corpus)], tmp_path / "ref", BuildConfig(max_count=4, split_val=0.2, chunk_size=3))

    calls = {"n": 0}
    real_write_tar = shards.build.write_tar

    def flaky_write_tar(path, members):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("simulated transient storage error")
        return real_write_tar(path, members)

    monkeypatch.setattr(shards.build, "write_tar", flaky_write_tar)
    with prefect_harness():
        result = shard_corpus([str(corpus)], str(tmp_path / "out"), max_count=4, split_val=0.2, chunk_size=3)
    assert calls["n"] > 2  # the failed task ran again
    manifest = Manifest.load(tmp_path / "out" / "manifest.json")
    assert manifest.to_dict() == reference.to_dict()
    assert result["written"] == 14 and result["fingerprint"] == reference.fingerprint
    for info in reference.shards:
        assert (tmp_path / "out" / info.name).read_bytes() == (tmp_path / "ref" / info.name).read_bytes()


def _reference(tmp_path):
    from shards.build import build
    from shards.process import BuildConfig

    corpus = photo_corpus(tmp_path / "c", copies=2)
    return corpus, build([str(corpus)], tmp_path / "ref", BuildConfig(max_count=4, split_val=0.2, chunk_size=3))


def test_flow_on_a_dask_cluster_of_worker_processes_writes_the_same_shards(tmp_path):
    from pipelines.shard_corpus import shard_corpus
    from shards.manifest import Manifest

    corpus, reference = _reference(tmp_path)
    with prefect_harness():
        result = shard_corpus([str(corpus)], str(tmp_path / "out"), max_count=4, split_val=0.2, chunk_size=3,
                              runner="dask", workers=2)
    assert result["fingerprint"] == reference.fingerprint
    assert Manifest.load(tmp_path / "out" / "manifest.json").to_dict() == reference.to_dict()
    for info in reference.shards:
        assert (tmp_path / "out" / info.name).read_bytes() == (tmp_path / "ref" / info.name).read_bytes()


def test_runner_parameters_are_checked_before_any_work(tmp_path):
    from pipelines.shard_corpus import make_task_runner

    for args, message in ((("processes", 2), "runner must be one of threads, dask, slurm"),
                          (("dask", 0), "workers must be >= 1"),
                          (("slurm", 2, "tcp://127.0.0.1:8786"), "dask_address needs runner='dask'")):
        with pytest.raises(ValueError, match=message):
            make_task_runner(*args)



_CALLS: list[int] = []


def _flaky_times(item: int, factor: int) -> int:
    """Fails twice, then works (a transient storage error)."""
    _CALLS.append(item)
    if len(_CALLS) < 3:
        raise ConnectionError("simulated transient storage error")
    return item * factor


def test_dask_units_retry_transient_errors_and_give_up_with_the_last(monkeypatch, capsys):
    import pickle

    import pipelines.shard_corpus as flow

    monkeypatch.setattr(flow, "RETRY_DELAYS", [0, 0])
    _CALLS.clear()
    assert flow.run_packed(pickle.dumps((_flaky_times, 7, (2,)))) == 14 and len(_CALLS) == 3
    assert capsys.readouterr().err.count("_flaky_times failed (simulated transient storage error); trying again") == 2
    _CALLS.clear()
    monkeypatch.setattr(flow, "RETRY_DELAYS", [0])
    with pytest.raises(ConnectionError, match="simulated"):
        flow.run_packed(pickle.dumps((_flaky_times, 7, (2,))))
    assert len(_CALLS) == 2
