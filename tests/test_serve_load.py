"""The short load/soak/fault run (``benchmarks/serve_load.py --quick``): a real ``tangentft serve`` process on
tiny-llama under locust at 8/32/128 users with faults interleaved, then the pass criteria of issue #23."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from serve_helpers import make_adapter

ROOT = Path(__file__).resolve().parents[1]


def test_quick_load_soak_and_faults(tmp_path):
    adapters = [f"s2a={make_adapter(tmp_path / 's2a', 's2ft', 1)}", f"s2b={make_adapter(tmp_path / 's2b', 's2ft', 2)}",
                f"loa={make_adapter(tmp_path / 'loa', 'lora', 3)}"]
    out = tmp_path / "serve_load.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick", "--out", str(out),
           *(f"--adapter={a}" for a in adapters)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["pass"] == {"no_5xx": True, "greedy_equal_alone": True, "greedy_sample_at_least_requested": True,
                              "rss_within_5pct": True, "queue_bounded": True, "clean_sigterm": True}, \
        json.dumps(result, indent=1)[:3000]
    statuses = {k: n for lv in result["levels"].values() for k, n in lv["statuses"].items()}
    assert statuses.get("completion 200") and statuses.get("chat_stream 200") and statuses.get("classify 200")
    assert result["levels"]["128"]["429"] > 0, "128 users never filled the queue of 32"
    assert result["sigterm"]["hung"] == 0 and result["sigterm"]["finished"] + result["sigterm"]["errored"] == 4
