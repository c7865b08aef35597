"""A replay killed by SIGINT or SIGTERM resumes from its cache and ends with the same results.json."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import write_replay_recipe

SLOW_MAIN = """
import sys, time
import auditor.replay as replay
real = replay.GenerationCache.add
def slow_add(self, generations):
    real(self, generations)
    time.sleep(60)  # the test interrupts during this pause, after the first finished batch, however busy the machine
replay.GenerationCache.add = slow_add
from auditor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def comparable(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    data.pop("timings")
    return data


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_replay_resumes_to_identical_results(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                                         sig: signal.Signals) -> None:
    recipe = write_replay_recipe(tmp_path)
    args = ["replay", "--base", str(base_dir), "--finetune", str(lora_random_dir), "--recipe", str(recipe)]
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "auditor", *args, "--out", str(reference), "--no-cache"],
                          capture_output=True).returncode == 0

    out = tmp_path / "resumed"
    command = [sys.executable, "-c", SLOW_MAIN, *args, "--out", str(out), "--cache-dir", str(cache)]
    # a shell's background job starts with SIGINT ignored, and Python then never raises KeyboardInterrupt
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((cache / "replay").glob("*.jsonl")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (out / "results.json").exists()  # nothing that looks complete
    cached = sum(len(p.read_text().splitlines()) for p in (cache / "replay").glob("*.jsonl"))
    assert cached > 0

    resumed = subprocess.run([sys.executable, "-m", "auditor", *args, "--out", str(out), "--cache-dir", str(cache)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(out / "results.json") == comparable(reference / "results.json")
