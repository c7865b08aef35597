"""Replay prompt suites under both checkpoints: greedy batched generation with a resumable cache.

Batches are planned once over the whole prompt list (sorted by length; `auditor.batching`), so a
resumed run with as much free memory forms exactly the same batches as an uninterrupted one and greedy
decoding gives identical tokens. (With less free memory it forms smaller batches; on the tiny test models
a prompt's tokens do not depend on its batch, but in low-precision arithmetic a near-tie could.)
A prefix every prompt of a batch shares (a system block, a persona) is computed once for the batch; its logits
differ from the whole prompts' only in the last float bits, and the tokens are the same (tests/test_replay.py).
Each finished batch is appended to the cache and synced to disk before the next starts: an
interrupted run loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from auditor.activations import ChatPrompt, Rendered, render
from auditor.batching import Batch, for_each_batch
from auditor.models import Checkpoint, ModelPair, Side
from auditor.recipe import ReplayConfig

# 2: the fingerprint covers configs, tokenizer, dtype and device; 3: plain greedy, whatever generation_config.json says;
# 4: the key names the torch and transformers versions
CACHE_VERSION = 4


@dataclass(frozen=True)
class Generation:
    """The new tokens of one greedy response, cut at the first end-of-turn token."""

    text: str
    token_ids: tuple[int, ...]


def default_cache_dir() -> Path:
    """`$DRIFT_AUDIT_CACHE`, else `$XDG_CACHE_HOME/drift-auditor`, else `~/.cache/drift-auditor`."""
    if os.environ.get("DRIFT_AUDIT_CACHE"):
        return Path(os.environ["DRIFT_AUDIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "drift-auditor"


class GenerationCache:
    """Append-only JSONL of generations for one model fingerprint and one set of generation settings.

    A torn last line (the process was killed mid-write) or any line that is not UTF-8 JSON is skipped on
    reading, with a warning: those generations are cache misses.
    """

    def __init__(self, folder: Path | None, fingerprint: str | None, settings: dict[str, Any]) -> None:
        self.entries: dict[str, Generation] = {}
        self.path: Path | None = None
        if folder is None or fingerprint is None:
            return  # caching is off, or a model in memory has no stable fingerprint
        digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True).encode()).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{fingerprint[:24]}-{digest[:16]}.jsonl"
        if self.path.exists():
            self._read(self.path)

    @classmethod
    def in_memory(cls) -> GenerationCache:
        """A cache that writes nothing, for generation outside an audit (the model organisms, benchmarks)."""
        return cls(None, None, {})

    def _read(self, path: Path) -> None:
        """Load every readable line; a line that is not UTF-8 JSON of a generation is a cache miss."""
        unreadable = 0
        for line in path.read_bytes().splitlines():
            try:
                row = json.loads(line.decode("utf-8"))
                self.entries[row["key"]] = Generation(row["text"], tuple(row["token_ids"]))
            except (ValueError, KeyError, TypeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                unreadable += 1
        if unreadable:
            warnings.warn(f"generation cache {path}: {unreadable} unreadable line(s) skipped (an interrupted write "
                          "or a damaged file); those generations are computed again", RuntimeWarning, stacklevel=3)

    def add(self, generations: dict[str, Generation]) -> None:
        self.entries.update(generations)
        if self.path is None:
            return
        lines = "".join(json.dumps({"key": k, "text": g.text, "token_ids": list(g.token_ids)}) + "\n"
                        for k, g in generations.items())
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def open_cache(pair: ModelPair, side: Side, cfg: ReplayConfig, cache_dir: Path | None,
               intervention: str | None = None) -> GenerationCache:
    """The generation cache of one side of `pair` in `cache_dir` (None: kept in memory only), and the one place
    a cache's key is made: the model's fingerprint covers its files, dtype and device; the settings add how it
    generates and any intervention, and the torch and transformers versions (their kernels and generation code can
    change the tokens, so an upgrade is a miss). Labels are not cached (every run judges afresh), so the judge is
    not part of the key."""
    import transformers

    settings = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "intervention": intervention,
                "torch": torch.__version__, "transformers": transformers.__version__}
    return GenerationCache(cache_dir, pair.fingerprint(side), settings)


def prompt_key(rendered: Rendered) -> str:
    return hashlib.sha256(json.dumps(rendered.ids).encode()).hexdigest()


def stop_ids(checkpoint: Checkpoint) -> list[int]:
    """Token ids that end a response: the tokenizer's and the generation config's end-of-turn tokens."""
    tokenizer = checkpoint.tokenizer
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(checkpoint.model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        ids.add(token_id)
    return sorted(i for i in ids if isinstance(i, int))


@dataclass
class FirstSteps:
    """The first response token's log-probabilities that generation's first step computed, by prompt index, for the
    prompts it generated (not those the cache held); only `columns` of the vocabulary (None: every column). The
    first-token score needs exactly these, so a replay that generates need not run the prompts again for it."""

    columns: list[int] | None = None
    rows: dict[int, Tensor] = field(default_factory=dict)

    def record(self, group: list[int]) -> Callable[[Tensor, Tensor], Tensor]:
        """A logits processor for one batch of `group`'s prompts: it keeps the first step's scores (the raw logits,
        under `plain_greedy`) and changes nothing."""
        first = True

        def processor(input_ids: Tensor, scores: Tensor) -> Tensor:
            nonlocal first
            if first:
                log_probs = F.log_softmax(scores.float(), dim=-1)
                kept = log_probs if self.columns is None else log_probs[:, self.columns]
                self.rows.update(zip(group, kept.cpu(), strict=True))
                first = False
            return scores
        return processor


def generate(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt], *, max_new_tokens: int, batch_size: int,
             cache: GenerationCache, share_prefix: bool = False, desc: str = "replay",
             first_steps: FirstSteps | None = None) -> list[Generation]:
    """Greedy responses to `prompts`, in order, computing only what the cache lacks. With `share_prefix`, prompts
    are batched by system prompt, then length, and the prefix a batch's prompts share is computed once for the
    batch (`batching.for_each_batch`); the tokens are the same either way (tests/test_replay.py), so it is not
    part of the cache's key. The audit's replay turns it on (`behaviour.judge_items`); other callers, such as the
    model organisms' distillation, keep the batches they were built with. `first_steps` collects the first
    token's log-probabilities of what is generated (`FirstSteps`)."""
    from transformers import LogitsProcessorList

    tokenizer, model = checkpoint.tokenizer, checkpoint.model
    rendered = [render(tokenizer, p) for p in prompts]
    keys = [prompt_key(r) for r in rendered]
    stops = stop_ids(checkpoint)

    def run(group: list[int], batch: Batch) -> None:
        processors = LogitsProcessorList([first_steps.record(group)] if first_steps is not None else [])
        output = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=stops,
                                top_p=None, top_k=None, temperature=None, logits_processor=processors,
                                **batch.cache_argument())
        new_tokens = output[:, batch.input_ids.shape[1]:].tolist()
        cache.add({keys[i]: cut_at_stop(tokens, stops, tokenizer) for i, tokens in zip(group, new_tokens, strict=True)})

    with plain_greedy(model):
        for_each_batch(checkpoint, [r.ids for r in rendered], run, limit=batch_size, new_tokens=max_new_tokens,
                       needed=[key not in cache.entries for key in keys], share_prefix=share_prefix,
                       groups=[p.system for p in prompts] if share_prefix else None, desc=desc)
    return [cache.entries[k] for k in keys]


@contextmanager
def plain_greedy(model: Any) -> Iterator[None]:
    """The model generates with a generation config of its special tokens alone, put back afterwards. Its own
    generation_config.json may ask for a repetition penalty, banned words or a minimum length, which `generate` applies
    even to greedy decoding; a fine-tune shipping other settings than its base's would be decoded differently, and
    the difference read as the fine-tune's. (A peft model generates through the model it wraps.)"""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id, eos_token_id=saved.eos_token_id, pad_token_id=saved.pad_token_id,
        cache_implementation=saved.cache_implementation)
    try:
        yield
    finally:
        target.generation_config = saved


def cut_at_stop(tokens: list[int], stops: Sequence[int], tokenizer: Any) -> Generation:
    """The response: `tokens` up to the first end-of-turn token in `stops`, and its text."""
    end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
    kept = tokens[:end]
    return Generation(tokenizer.decode(kept, skip_special_tokens=True), tuple(kept))


def first_token_log_probs(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt], *, batch_size: int,
                          desc: str = "first-token logits") -> Tensor:
    """Log-probabilities of the first response token, (prompts, vocab), from one forward pass per batch."""
    tokenizer, model = checkpoint.tokenizer, checkpoint.model
    rendered = [render(tokenizer, p) for p in prompts]
    rows: dict[int, Tensor] = {}

    def run(group: list[int], batch: Batch) -> None:
        logits = model(**batch.forward_inputs(), use_cache=False, logits_to_keep=1).logits[:, -1]
        for i, row in zip(group, F.log_softmax(logits.float(), dim=-1).cpu(), strict=True):
            rows[i] = row

    for_each_batch(checkpoint, [r.ids for r in rendered], run, limit=batch_size, desc=desc)
    return torch.stack([rows[i] for i in range(len(prompts))])


def response_log_likelihood(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt],
                            responses: Sequence[Sequence[int]], *, batch_size: int,
                            desc: str = "response likelihood") -> Tensor:
    """Mean log-probability per token (nats) that `checkpoint` gives each response after its prompt, from forward
    passes over prompt and response; NaN for an empty response. Only the response's positions get logits
    (`logits_to_keep`): they are right-aligned in a left-padded batch.

    The audit scores many answers to one prompt (each removal's and each steering's answer to the same request),
    often the same answer more than once. So each distinct (prompt, response) is scored once, and the answers to a
    prompt answered more than once are batched together, with the prompt's keys and values computed once for them
    (`share_prefix`; the prefix ends before the prompt's last token, whose logits predict the first response
    token). Prompts answered once are batched by system prompt, which they then share. The values differ from
    unshared passes by float rounding only (tests/test_replay.py)."""
    tokenizer, model = checkpoint.tokenizer, checkpoint.model
    contexts = [tuple(render(tokenizer, p).ids) for p in prompts]
    rows: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}  # distinct (prompt, response) -> its rows
    for i, (context, response) in enumerate(zip(contexts, responses, strict=True)):
        if response:
            rows.setdefault((context, tuple(response)), []).append(i)
    pairs = list(rows)
    answered = Counter(context for context, _ in pairs)
    groups = [("prompt", context) if answered[context] > 1 else ("system", prompts[rows[(context, response)][0]].system)
              for context, response in pairs]
    means = torch.full((len(prompts),), float("nan"), dtype=torch.float64)

    def run(group: list[int], batch: Batch) -> None:
        keep = max(len(pairs[i][1]) for i in group)
        logits = model(**batch.forward_inputs(), use_cache=False,  # the shared prompt does not run again
                       logits_to_keep=keep + 1).logits[:, :-1].float()  # position t predicts token t + 1
        targets = batch.input_ids[:, -keep:]
        picked = (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)).double().cpu()
        for row, i in enumerate(group):
            n = len(pairs[i][1])
            means[rows[pairs[i]]] = picked[row, keep - n:].mean()

    if pairs:
        for_each_batch(checkpoint, [list(context + response) for context, response in pairs], run, limit=batch_size,
                       share_prefix=True, groups=groups, separate_groups=True,
                       own_from=[len(context) - 1 for context, _ in pairs], desc=desc)
    return means


def kl_per_prompt(base_log_probs: Tensor, finetune_log_probs: Tensor) -> Tensor:
    """KL(base || fine-tune) of the first-token distributions, one value per prompt (nats). A token the base rules
    out (log-probability -inf) adds 0 log 0 = 0, not the NaN of exp(-inf) * (-inf - -inf)."""
    p = base_log_probs.double()
    q = finetune_log_probs.double()
    terms = torch.where(p.isneginf(), torch.zeros_like(p), p.exp() * (p - q))
    return terms.sum(-1).clamp(min=0.0)
