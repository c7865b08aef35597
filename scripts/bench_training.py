"""Training benchmark: the `persona` organism trained side by side in fresh processes, with glibc's
default heap (large blocks mmapped and unmapped every step) and with `auditor.heap.keep_freed_memory`
(what the organism build uses). Prints wall, kernel time, page faults and peak RSS of each, their
ratios, and whether the two adapters are bit-identical.

    .venv/bin/python scripts/bench_training.py          # builds `aligned` first if it is not cached
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import contextlib, json, resource, sys, time
from pathlib import Path
from auditor import organisms
mode, parent, out = sys.argv[1:4]
if mode == "glibc-default":
    organisms.keep_freed_memory = contextlib.nullcontext
start = time.perf_counter()
organisms._train("persona", Path(parent), Path(out))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - start, "kernel_seconds": usage.ru_stime,
                  "page_faults": usage.ru_minflt, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""

MODES = ("glibc-default", "heap-kept")


def train(mode: str, parent: Path, out: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(parent), str(out)],
                          capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return left.keys() == right.keys() and all(bool((left[k] == right[k]).all()) for k in left)


def main() -> None:
    from auditor import organisms
    from auditor.replay import default_cache_dir

    parent = organisms.build("aligned", default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: train(mode, parent, Path(tmp) / mode) for mode in MODES}
        identical = same_weights(Path(tmp) / MODES[0], Path(tmp) / MODES[1])
    for mode, r in results.items():
        print(f"{mode:14s} {r['seconds']:6.1f} s wall  {r['kernel_seconds']:6.1f} s kernel  "
              f"{r['page_faults']:>10,.0f} page faults  {r['peak_rss_mb']:6.0f} MB peak RSS")
    default, kept = results["glibc-default"], results["heap-kept"]
    print(f"heap-kept / glibc-default: wall {kept['seconds'] / default['seconds']:.2f}x, "
          f"peak RSS {kept['peak_rss_mb'] / default['peak_rss_mb']:.2f}x; adapters bit-identical: {identical}")


if __name__ == "__main__":
    main()
