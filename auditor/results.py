"""results.json: the schema header, provenance, timings, and atomic file writes.

Every output file is written to a temporary file beside it and renamed into place, so an
interrupted run never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from auditor.errors import AuditInputError

SCHEMA = "drift-audit/1"
PACKAGES = ("drift-auditor", "torch", "transformers", "peft", "trl", "datasets", "safetensors", "accelerate", "gguf")


def environment(device: str, dtype: str) -> dict[str, Any]:
    """What produced the numbers: versions, platform and the compute settings."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "device": device,
            "dtype": dtype, "packages": versions}


class Timings(dict[str, float]):
    """Wall-clock seconds per stage, filled by `stage`."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)


def prepare_out_dir(out: Path) -> Path:
    """Create the output folder and prove it is writable before any heavy work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise AuditInputError(f"--out {out} is not a writable folder ({exc.strerror or exc}). "
                              "Choose another folder with --out.") from None
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
