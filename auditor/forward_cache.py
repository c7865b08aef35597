"""A disk cache for what forward passes compute without generating: the directions' activations and the first
response token's log-probabilities.

A rerun of an audit, or a second audit of the same base (`audit-many`, the demo), would otherwise run those
passes again: on the demo's CPU they were half of an audit whose generations were all cached. Each call's
tensors go to one safetensors file named by the model's fingerprint (`ModelPair.fingerprint`: its files, dtype
and device) and a hash of everything that decides a float bit of the result: the rendered prompts' token ids,
the batch limit, the positions and layers asked for, the source of the modules that compute them and the
versions of torch and transformers (a code change is a miss, never a stale tensor). Reading a file gives
exactly the tensors computed then. (Batches are planned from free memory, so a run with much less of it could
plan smaller batches and differ from a cached run in the last float bits, as `auditor.replay` says of
generations.) A file is written to a temporary name and renamed into place: an interrupted write leaves no file,
and a file that cannot be read is computed again with a warning.

Activations are stored in float32, about 4 x prompts x positions x layers x d_model bytes a side: 22 MB for the
demo's SmolLM2, about 0.6 GB for the `default` recipe on an 8B model. `--no-cache` turns this cache off with
the generation cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from auditor.models import ModelPair, Side

CACHE_VERSION = 1
# the modules whose code decides the cached tensors: a change to any of them makes every earlier file a miss
CODE = ("activations", "batching", "behaviour", "directions", "hooks", "models", "replay")


@functools.cache
def code_digest() -> str:
    """A hash of the source of the modules in CODE and of the versions of torch and transformers, so a cached
    tensor is never one that other code computed."""
    import torch
    import transformers

    digest = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    for name in CODE:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()


class ForwardCache:
    """The forward-pass results of one model (its fingerprint) in `folder`; None for either computes every time
    and writes nothing (caching is off, or a model in memory has no stable fingerprint)."""

    def __init__(self, folder: Path | None, fingerprint: str | None) -> None:
        self.folder = folder if fingerprint is not None else None
        self.fingerprint = fingerprint or ""

    @classmethod
    def for_side(cls, pair: ModelPair, side: Side, folder: Path | None) -> ForwardCache:
        return cls(folder, pair.fingerprint(side))

    def path(self, kind: str, key: dict[str, Any]) -> Path | None:
        """Where the tensors of `kind` computed from `key` are kept (None: not cached)."""
        if self.folder is None:
            return None
        digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "code": code_digest(), "kind": kind, **key},
                                           sort_keys=True).encode())
        return self.folder / f"{self.fingerprint[:24]}-{kind}-{digest.hexdigest()[:16]}.safetensors"

    def tensors(self, kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """The tensors `compute` returns for `key`: read from the cache when there, else computed and stored."""
        from safetensors.torch import load_file, save_file

        path = self.path(kind, key)
        if path is not None and path.exists():
            try:
                return load_file(str(path))
            except Exception as error:  # safetensors raises its own error types for a damaged file
                warnings.warn(f"forward cache {path} could not be read ({error}); it is computed again",
                              RuntimeWarning, stacklevel=2)
        result = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            save_file({name: t.contiguous() for name, t in result.items()}, str(partial))
            os.replace(partial, path)
        return result
