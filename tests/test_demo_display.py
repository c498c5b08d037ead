"""The demo's console: one line per stage on the terminal, everything else in the log file."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

CHILD = """
import json, os, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, {scripts!r})
from demo_display import Stages, quiet_console
out = Path(sys.argv[1])
with quiet_console(out / "demo.log", Stages(out, cells=1, steps=10, baselines=1), every=0.05) as say:
    print("prefect chatter"); print("a warning", file=sys.stderr)
    subprocess.run([sys.executable, "-c", "print('a child process bar')"])
    say("stage zero done")
    (out / "corpus").mkdir(parents=True); (out / "corpus" / "sources.txt").write_text("a.jpg\\nb.jpg\\n")
    (out / "shards").mkdir(parents=True); (out / "shards" / "manifest.json").write_text("{{}}")
    (out / "cells" / "c").mkdir(parents=True)
    (out / "cells" / "c" / "metrics.jsonl").write_text(json.dumps({{"step": 10}}) + "\\n")
    (out / "cells" / "c" / "train_summary.json").write_text("{{}}")
    (out / "eval").mkdir()
    (out / "eval" / "CDC_x.json").write_text("{{}}"); (out / "eval" / "JPEG.json").write_text("{{}}")
    (out / "summary.json").write_text("{{}}")
    time.sleep(0.5)
print("after")
"""


def test_the_terminal_shows_stages_and_the_log_keeps_the_rest(tmp_path):
    code = CHILD.format(scripts=str(REPO / "scripts"))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shown = r.stdout.replace("\r\033[K", "\n")
    for line in ("stage zero done", "✓ photo corpus", "2 photos fetched", "✓ shards", "✓ training",
                 "1/1 cells, 10/10 steps", "✓ evaluation",
                 "✓ registry and summary", "after"):
        assert line in shown, shown
    assert "chatter" not in r.stdout + r.stderr and "child process" not in r.stdout
    log = (tmp_path / "demo.log").read_text()
    assert "prefect chatter" in log and "a warning" in log and "a child process bar" in log
    assert json.loads((tmp_path / "summary.json").read_text()) == {}
