"""`make bench` takes minutes, so the suite runs its two MicroPython programs on small
inputs: the host-cost pipeline (tools/mp/bench_host.py) and one whole update through the
bench's agent entry (tools/mp/bench_main.py). They broke once without any test noticing."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))

from bench import MICROPYTHON, ROOT, run_agent  # noqa: E402
from mkimage import make_image  # noqa: E402


def test_host_pipeline_on_a_small_stream():
    env = dict(os.environ, RMOTA_BENCH_PAYLOAD="60000")
    out = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=24m", os.path.join(ROOT, "tools/mp/bench_host.py"), "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["payload"] == 60000
    for rx in ("rx2048", "rx10240"):
        assert res[rx]["ok"] is True, res[rx]
    assert res["alloc"]["64"] == res["alloc"]["2048"]


def test_one_update_through_the_bench_entry(tmp_path):
    payload = bytes(range(256)) * 120
    r = run_agent(make_image(payload, b"unix", 2), str(tmp_path))
    assert r["ok"], r
