"""The public API: `audit`, `directions` and `replay`, and the composition root under them.

    import auditor

    results = auditor.audit("path/to/base", "path/to/adapter", recipe="quick", out="reports/run-1")
    print(results.verdict, results.replay.refusal.finetune.rate)

`auditor.audit` is this module's `audit`; `directions` and `replay` are reached as `auditor.api.directions` and
`auditor.api.replay`, since `auditor.directions` and `auditor.replay` are the modules that measure them.
`audit_model` audits a model in memory (the training callback's way in).

Each returns the typed results (`auditor.results.AuditResults`) and, given `out`, writes the same files as the
command of the same name. The CLI, `audit-many`, `demo` and the training callback go through `Request` and
`prepare` below, so every way in checks its inputs in the same order: the recipe, every suite and the output
folder before any weights load, then the pair from its files, then the prompts' lengths.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from auditor import models, outputs
from auditor.errors import AuditInputError
from auditor.inputs import Inputs, load_inputs
from auditor.models import Checkpoint, LoadOptions
from auditor.pipeline import Audit, Stage
from auditor.recipe import Recipe, load_recipe
from auditor.replay import default_cache_dir
from auditor.results import AuditResults


@dataclass(frozen=True)
class Request:
    """What an audit of one base needs besides the fine-tune: the recipe, its overrides, the cache and how to load.

    `cache_dir` None turns the cache of generations and forward passes off; by default it is
    `default_cache_dir() / "replay"`.
    """

    base: str | None = None
    recipe: str | Path = "default"
    batch_size: int | None = None
    judge_model: str | None = None
    cache_dir: Path | None = field(default_factory=lambda: default_cache_dir() / "replay")
    options: LoadOptions = field(default_factory=LoadOptions)
    base_revision: str | None = None

    def load_recipe(self) -> Recipe:
        """The recipe with the request's overrides (`--batch-size`, `--judge-model`)."""
        recipe = load_recipe(str(self.recipe))
        if self.batch_size is not None:
            if self.batch_size < 1:
                raise AuditInputError(f"batch size must be at least 1, got {self.batch_size} (--batch-size, or "
                                      "batch_size= in the API).")
            recipe = replace(recipe, batch_size=self.batch_size,
                             replay=replace(recipe.replay, batch_size=self.batch_size))
        if self.judge_model:
            recipe = replace(recipe, replay=replace(recipe.replay, judge_model=self.judge_model))
        return recipe


def prepare(request: Request, finetune: str, stage: Stage, *, out: Path | None,
            finetune_revision: str | None = None, shared_base: Checkpoint | None = None) -> Audit:
    """Recipe (with overrides), inputs, output folder and the loaded pair, in that order, so cheap mistakes fail
    before models load. `shared_base`: the base already in memory from an earlier audit of the same base."""
    recipe = request.load_recipe()
    inputs = load_inputs(recipe, replay=stage != "directions")
    folder = outputs.prepare_out_dir(out) if out is not None else None
    started = time.perf_counter()
    timings = outputs.Timings()
    with timings.stage("load"):
        pair = models.load_pair(request.base, finetune, request.options, base_revision=request.base_revision,
                         finetune_revision=finetune_revision, shared_base=shared_base)
    print(f"drift-audit: running on {request.options.compute().describe()}", file=sys.stderr)
    return Audit(pair=pair, recipe=recipe, inputs=inputs, out=folder, cache_dir=request.cache_dir, timings=timings,
                 started=started)


def load_options(options: dict[str, Any]) -> LoadOptions:
    """`LoadOptions` from keyword arguments, naming any that is not one of its fields."""
    known = {f.name for f in fields(LoadOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AuditInputError(f"unknown load option(s) {', '.join(unknown)}; the options are "
                              f"{', '.join(sorted(known))}.")
    return LoadOptions(**options)


def _request(base: str | None, recipe: str | Path, cache_dir: str | Path | None, cache: bool,
             load: dict[str, Any]) -> Request:
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "replay"
    return Request(base=base, recipe=recipe, cache_dir=folder if cache else None, options=load_options(load))


def _run(stage: Stage, base: str | None, finetune: str, recipe: str | Path, out: str | Path | None,
         cache_dir: str | Path | None, cache: bool, load: dict[str, Any]) -> AuditResults:
    request = _request(base, recipe, cache_dir, cache, load)
    return prepare(request, finetune, stage, out=Path(out) if out is not None else None).run(stage)


def audit(base: str | None, finetune: str, *, recipe: str | Path = "default", out: str | Path | None = None,
          cache_dir: str | Path | None = None, cache: bool = True, **load_options: Any) -> AuditResults:
    """The whole audit of `finetune` against `base` (None: the base the fine-tune names): directions, replay,
    attribution and the verdict. With `out`, writes results.json, directions.safetensors, report.html and
    summary.md there. `load_options` are `auditor.models.LoadOptions` fields (dtype, device, low_memory,
    trust_remote_code, allow_pickle, chat_template). Bad input raises `AuditInputError` naming the fix."""
    return _run("audit", base, finetune, recipe, out, cache_dir, cache, load_options)


def directions(base: str | None, finetune: str, *, recipe: str | Path = "default", out: str | Path | None = None,
               **load_options: Any) -> AuditResults:
    """Only the refusal and persona directions and how far the fine-tune moved them (no generation)."""
    return _run("directions", base, finetune, recipe, out, None, False, load_options)


def replay(base: str | None, finetune: str, *, recipe: str | Path = "default", out: str | Path | None = None,
           cache_dir: str | Path | None = None, cache: bool = True, **load_options: Any) -> AuditResults:
    """The directions, then the suites replayed under both checkpoints and judged; no attribution, no verdict."""
    return _run("replay", base, finetune, recipe, out, cache_dir, cache, load_options)


def audit_model(model: Any, tokenizer: Any, *, base: str | None, recipe: Recipe, inputs: Inputs, out: Path | None,
                options: LoadOptions, name: str = "in-memory fine-tune") -> AuditResults:
    """The whole audit of a model in memory: a peft model against itself with its adapter off, a full fine-tune
    against `base` loaded from disk. Nothing is cached (the weights may change between calls). `recipe` and
    `inputs` are loaded by the caller (`load_inputs`), so a training run can check them before it starts.

    The model is audited in eval mode and the tokenizer set up for the audit (left padding, a pad token, the chat
    template); both are put back afterwards, so training goes on exactly as before.
    """
    was_training = model.training
    model.eval()
    try:
        with models.tokenizer_restored(tokenizer):
            pair = models.pair_from_model(model, tokenizer, base=base, options=options, name=name)
            folder = outputs.prepare_out_dir(out) if out is not None else None
            return Audit(pair=pair, recipe=recipe, inputs=inputs, out=folder, cache_dir=None).run()
    finally:
        if was_training:
            model.train()
