"""The Prefect flow ``shard-corpus`` against a real (temporary) Prefect server."""

import pytest
from test_shards import photo_corpus

pytestmark = pytest.mark.slow


def test_flow_matches_the_cli_and_retries_transient_errors(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

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
    with prefect_test_harness():
        result = shard_corpus([str(corpus)], str(tmp_path / "out"), max_count=4, split_val=0.2, chunk_size=3)
    assert calls["n"] > 2  # the failed task ran again
    manifest = Manifest.load(tmp_path / "out" / "manifest.json")
    assert manifest.to_dict() == reference.to_dict()
    assert result["written"] == 14 and result["fingerprint"] == reference.fingerprint
    for info in reference.shards:
        assert (tmp_path / "out" / info.name).read_bytes() == (tmp_path / "ref" / info.name).read_bytes()
