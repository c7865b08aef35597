"""A run's output files: provenance, timings, and atomic writes of the output set.

Every output file is written to a temporary file beside it and renamed into place, so an
interrupted run never leaves a half-written file that looks complete. A run's outputs are one set
(`write_outputs`): a run that fails never leaves its new files beside an earlier run's.
Files get the mode `open` would give them (0666 less the umask), not the 0600 of a temporary file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.errors import AuditInputError
from auditor.results import Environment

if TYPE_CHECKING:
    from auditor.devices import Compute

OUTPUT_NAMES = ("results.json", "directions.safetensors", "report.html", "summary.md")
STAGING_PREFIX = ".drift-audit-new-"
PACKAGES = ("drift-auditor", "torch", "transformers", "peft", "trl", "datasets", "safetensors", "accelerate", "gguf")


def environment(compute: Compute) -> Environment:
    """What produced the numbers: versions, platform, and the device and dtype that ran (resolved, never `auto`)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return Environment(python=platform.python_version(), platform=platform.platform(), device=compute.device,
                       dtype=compute.dtype_name, device_name=compute.name, packages=versions)


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


def file_mode() -> int:
    """0666 less the process umask: the mode `open` gives a new file (`mkstemp` always gives 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    with open(path, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_synced(Path(tmp), data, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(out: Path, files: dict[str, bytes], replaces: Iterable[str] = OUTPUT_NAMES) -> None:
    """Write `files` into `out` as one set, replacing every file named in `replaces`.

    All files are written and synced in a hidden folder inside `out` first; only then are the earlier
    run's files moved out of the way and the new ones renamed in. A failure while writing (a full disk)
    leaves the earlier set untouched; nothing can leave a new file beside a stale one.
    """
    stage = Path(tempfile.mkdtemp(dir=out, prefix=STAGING_PREFIX))
    try:
        mode = file_mode()
        for name, data in files.items():
            _write_synced(stage / name, data, mode)
        earlier = stage / ".earlier"
        earlier.mkdir()
        for name in replaces:
            if (out / name).exists():
                os.replace(out / name, earlier / name)
        for name in files:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def json_bytes(data: dict[str, Any]) -> bytes:
    """JSON as every output file writes it: indented, and refusing NaN (no reader agrees on it)."""
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
