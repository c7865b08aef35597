"""Loading a base model and its fine-tune, safely and with one copy of shared weights.

Sources are resolved to files on disk first and checked (weight format, remote code, compatibility of
the pair) before any weights are loaded (`auditor.sources`), so a wrong argument fails in seconds, not
after minutes of loading.

A LoRA fine-tune is attached to the single base copy and toggled with peft's `disable_adapter`;
a full fine-tune is loaded beside the base, or in turn with `low_memory`.
"""

from __future__ import annotations

import gc
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from auditor import devices
from auditor.errors import AuditInputError
from auditor.results import FinetuneInfo, ModelInfo
from auditor.sources import (
    Source,
    check_compatible,
    check_weight_format,
    fingerprint,
    identical_to_base,
    infer_base,
    load_config,
    resolve_source,
    sha256_file,
)
from auditor.verdict import IDENTICAL_WARNING

Side = Literal["base", "finetune"]
Kind = Literal["lora", "full"]
LAYER_PATHS = {  # config.model_type -> attribute path of the decoder block list
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
    "mpt": "transformer.blocks",
}
DEFAULT_LAYER_PATH = "model.layers"  # llama, mistral, qwen2/3, gemma, phi3, olmo, ...


@dataclass(frozen=True)
class LoadOptions:
    """How to load checkpoints; mirrors the CLI flags of the same names."""

    dtype: devices.DtypeFlag = "auto"
    device: devices.DeviceFlag = "auto"
    low_memory: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    chat_template: str | None = None

    def compute(self) -> devices.Compute:
        """The device and dtype these options resolve to on this machine (what results.json records)."""
        return devices.resolve(self.device, self.dtype)


def check_adapter_fits(model: nn.Module, adapter: Source) -> None:
    """Check every LoRA weight against the base module it would attach to (names and shapes)."""
    from safetensors import safe_open

    file = adapter.path / "adapter_model.safetensors"
    if not file.is_file():
        return  # pickled adapter allowed by the user; peft reports its own mismatches
    modules = dict(model.named_modules())
    problems = []
    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            match = re.match(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
            if not match:
                continue
            module = modules.get(match.group(1))
            shape = handle.get_slice(key).get_shape()
            if not isinstance(module, nn.Linear):
                problems.append(f"{match.group(1)} does not exist in the base")
            elif match.group(2) == "A" and shape[1] != module.in_features:
                problems.append(f"{match.group(1)} takes {module.in_features} inputs, adapter has {shape[1]}")
            elif match.group(2) == "B" and shape[0] != module.out_features:
                problems.append(f"{match.group(1)} gives {module.out_features} outputs, adapter has {shape[0]}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise AuditInputError(f"--finetune {adapter.name} is an adapter made for another base than --base: "
                              f"{'; '.join(problems[:3])}{more}. Audit it against the base it was trained on.")


def check_adapter_loaded(peft_model: Any, adapter: Source) -> None:
    """Every LoRA weight peft created must come from the adapter file, and every tensor in the file must land
    in one. peft only warns about either and keeps missing weights at their initial values (B = 0: no change),
    so an empty or mismatched file would be audited as the base against itself."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    file = adapter.path / "adapter_model.safetensors"
    if not file.is_file():
        return  # pickled adapter allowed by the user
    with safe_open(str(file), framework="pt") as handle:
        saved = set(handle.keys())
    created = set(get_peft_model_state_dict(peft_model).keys())
    for problem, keys in (("has no weights for", sorted(created - saved)),
                          ("has weights that match no module of the adapter", sorted(saved - created))):
        if keys:
            more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
            raise AuditInputError(f"--finetune {adapter.name}: {file.name} {problem} ({len(keys)} keys: "
                                  f"{', '.join(keys[:3])}{more}); adapter_config.json and the weights do not belong "
                                  "together. Re-save the adapter from the trained model.")


def decoder_layers(model: Any, override: str | None = None) -> list[nn.Module]:
    """The decoder blocks, in order. Layer `l` here is hidden_states[l + 1] in transformers."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(inner, "config", None), "model_type", "")
    path = override or LAYER_PATHS.get(model_type, DEFAULT_LAYER_PATH)
    found: Any = inner
    for part in path.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, nn.ModuleList) or len(found) == 0:
        raise AuditInputError(f"cannot find the decoder layers of this {model_type or type(inner).__name__} model "
                              f"at `{path}`. Set `layers_path:` in the recipe to the attribute path of its "
                              "block list (for example transformer.h).")
    return list(found)


@dataclass
class Checkpoint:
    """A model ready for forward passes, with the tokenizer whose chat template renders its prompts."""

    model: Any  # a transformers PreTrainedModel, or a peft PeftModel around one
    tokenizer: Any


@dataclass(frozen=True)
class CheckedPair:
    """A base and its fine-tune resolved and checked from their files, before any weights load (`check_pair`)."""

    base: Source
    finetune: Source
    kind: Kind
    base_inferred_from: str | None
    warnings: tuple[str, ...]


@dataclass
class ModelPair:
    """The base and its fine-tune. `loaded(side)` gives one of them; for a LoRA it toggles the adapter.

    Made by `lora`, `full` or `in_turn` (or by `load_pair` / `pair_from_model`, which call them), which say how the
    models are held; the fields after `warnings` are that state, which only the pair's own methods touch.
    """

    base: Source
    finetune: Source
    options: LoadOptions
    kind: Kind
    base_inferred_from: str | None = None
    identical: str | None = None  # why the fine-tune computes what the base computes (see identical_to_base)
    warnings: list[str] = field(default_factory=list)
    _base: Checkpoint | None = field(default=None, init=False, repr=False)
    _finetune: Checkpoint | None = field(default=None, init=False, repr=False)
    _resident: tuple[Side, Checkpoint] | None = field(default=None, init=False, repr=False)  # see _resident_side

    @classmethod
    def lora(cls, base: Source, finetune: Source, options: LoadOptions, model: Checkpoint, *,
             base_inferred_from: str | None = None) -> ModelPair:
        """A LoRA fine-tune: one model, the base with the adapter attached (a peft model), so the base's weights
        are held once; the adapter is on for the fine-tune and off for the base."""
        pair = cls(base, finetune, options, "lora", base_inferred_from)
        pair._base = model
        return pair

    @classmethod
    def full(cls, base: Source, finetune: Source, options: LoadOptions, base_model: Checkpoint,
             finetune_model: Checkpoint, *, base_inferred_from: str | None = None) -> ModelPair:
        """A full fine-tune with both models in memory."""
        pair = cls(base, finetune, options, "full", base_inferred_from)
        pair._base, pair._finetune = base_model, finetune_model
        return pair

    @classmethod
    def in_turn(cls, base: Source, finetune: Source, options: LoadOptions, *,
                base_inferred_from: str | None = None) -> ModelPair:
        """A full fine-tune loaded one side at a time from its files (`low_memory`): nothing is loaded until a side
        is used, and then only that side is held."""
        return cls(base, finetune, options, "full", base_inferred_from)

    @contextmanager
    def loaded(self, side: Side) -> Iterator[Checkpoint]:
        """The checkpoint of `side`, ready for forward passes while the context is open. A LoRA pair turns its
        adapter off for the base (and back on after); a pair loaded in turn keeps the side used last (see
        `_resident_side`)."""
        if self.kind == "lora":
            assert self._base is not None, "a LoRA pair holds its model (ModelPair.lora)"
            if side == "finetune":
                yield self._base
            else:
                with self._base.model.disable_adapter():
                    yield self._base
            return
        held = self._base if side == "base" else self._finetune
        yield held if held is not None else self._resident_side(side)

    def in_memory(self) -> list[Checkpoint]:
        """The checkpoints this pair holds now: one for a LoRA (the base with its adapter), two for a full
        fine-tune, and for one loaded in turn the side used last, if any. For memory checks."""
        held = [c for c in (self._base, self._finetune) if c is not None]
        return held + [self._resident[1]] if self._resident is not None else held

    def _resident_side(self, side: Side) -> Checkpoint:
        """Low-memory mode: the one side kept in memory, loaded only when the other side was the last one used.
        A stage asks for the same side many times in a row (attribution replays the fine-tune under every
        intervention), so reloading on every `loaded` would read the checkpoint from disk a dozen times."""
        if self._resident is None or self._resident[0] != side:
            self._resident = None  # free the other side before this one is loaded
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._resident = (side, _load_checkpoint(self.base if side == "base" else self.finetune, self.options))
        return self._resident[1]

    def fingerprint(self, side: Side) -> str | None:
        """A hash of everything that decides what `side` computes: its weight, config, tokenizer and chat
        template files (for a LoRA: the base's and the adapter's), the `--chat-template` override, the dtype
        and the device class. None for a model in memory, whose weights may change between calls (nothing
        is cached for it)."""
        sources = [self.base] if side == "base" else [self.finetune]
        if side == "finetune" and self.kind == "lora":
            sources.insert(0, self.base)
        if any(source.in_memory for source in sources):
            return None
        template = self.options.chat_template
        return fingerprint(sources, {
            "dtype": str(_torch_dtype(self.options)), "device": _device(self.options),
            "chat_template": sha256_file(Path(template)) if template else None,
        })

    def tokenizer_and_positions(self) -> tuple[Any, int | None]:
        """The base's tokenizer and how many positions its model has (None where its config does not say),
        without loading weights when the two models are loaded in turn (low memory)."""
        if self._base is not None:
            return self._base.tokenizer, getattr(self._base.model.config, "max_position_embeddings", None)
        config = load_config(self.base, "--base", trust_remote_code=self.options.trust_remote_code)
        return _load_tokenizer(self.base, self.options), getattr(config, "max_position_embeddings", None)

    def release_base(self) -> Checkpoint | None:
        """The plain base, for the next pair (a LoRA is taken off the shared weights); this pair is spent."""
        base, self._base, self._finetune, self._resident = self._base, None, None, None
        if base is not None and self.kind == "lora":
            return Checkpoint(base.model.unload(), base.tokenizer)
        return base

    def describe(self) -> tuple[ModelInfo, FinetuneInfo]:
        """Provenance of both models for results.json."""
        base = ModelInfo(**self.base.describe(), inferred_from=self.base_inferred_from)
        finetune = FinetuneInfo(**self.finetune.describe(), kind=self.kind,
                                identical_to_base=self.identical is not None)
        return base, finetune


def check_pair(base_name: str | None, finetune_name: str, options: LoadOptions, *,
               base_revision: str | None = None, finetune_revision: str | None = None) -> CheckedPair:
    """Resolve and check a base and its fine-tune from their files alone, loading no weights: what can be
    wrong with the names, formats and configs fails here, in seconds."""
    finetune = resolve_source(finetune_name, finetune_revision, what="--finetune")
    inferred = None
    if base_name is None:
        base_name, inferred = infer_base(finetune)
        print(f"drift-audit: no --base given; using {base_name} (from the fine-tune's {inferred})", file=sys.stderr)
    base = resolve_source(base_name, base_revision, what="--base")
    if base.is_adapter:
        raise AuditInputError(f"--base {base_name} is a PEFT adapter; the base must be a full model. "
                              "Pass the adapter as --finetune and its base model as --base.")
    check_weight_format(base, "--base", allow_pickle=options.allow_pickle)
    check_weight_format(finetune, "--finetune", allow_pickle=options.allow_pickle)
    base_cfg = load_config(base, "--base", trust_remote_code=options.trust_remote_code)
    ft_cfg = load_config(finetune, "--finetune", trust_remote_code=options.trust_remote_code)
    if not finetune.is_adapter:
        check_compatible(base, base_cfg, finetune, ft_cfg)
    warnings = []
    full_weights = [p.name for p in finetune.weight_files
                    if not p.name.startswith("adapter_model")] if finetune.is_adapter else []
    if full_weights:
        warnings.append(f"--finetune {finetune.name} holds both a PEFT adapter (adapter_config.json) and full "
                        f"model weights ({', '.join(full_weights[:2])}); it was audited as the adapter. Move "
                        "one of them to its own folder to audit the other.")
        print(f"drift-audit: warning: {warnings[-1]}", file=sys.stderr)
    return CheckedPair(base, finetune, "lora" if finetune.is_adapter else "full", inferred, tuple(warnings))


def load_pair(base_name: str | None, finetune_name: str, options: LoadOptions, *,
              base_revision: str | None = None, finetune_revision: str | None = None,
              shared_base: Checkpoint | None = None) -> ModelPair:
    """Resolve, check and load a base and its fine-tune (see module docstring).

    With no `base_name`, the base is the one the fine-tune names (see `infer_base`). `shared_base`
    is the base already in memory from an earlier pair (`ModelPair.release_base`), for audits of
    several checkpoints of one run.
    """
    checked = check_pair(base_name, finetune_name, options, base_revision=base_revision,
                         finetune_revision=finetune_revision)
    base, finetune = checked.base, checked.finetune
    if finetune.is_adapter:
        base_checkpoint = shared_base or _load_checkpoint(base, options)
        check_adapter_fits(base_checkpoint.model, finetune)
        peft_model = _attach_adapter(base_checkpoint.model, finetune, options)
        try:
            check_adapter_loaded(peft_model, finetune)
        except AuditInputError:
            peft_model.unload()  # a shared base goes on to the next checkpoint without this adapter
            raise
        pair = ModelPair.lora(base, finetune, options, Checkpoint(peft_model, base_checkpoint.tokenizer),
                              base_inferred_from=checked.base_inferred_from)
        pair.warnings += [*checked.warnings,
                          *_check_adapter_tokenizer(base_checkpoint.tokenizer, finetune, options.chat_template)]
    elif options.low_memory:
        pair = ModelPair.in_turn(base, finetune, options, base_inferred_from=checked.base_inferred_from)
        pair.warnings += checked.warnings
    else:
        base_checkpoint = shared_base or _load_checkpoint(base, options)
        finetune_checkpoint = _load_checkpoint(finetune, options)
        pair = ModelPair.full(base, finetune, options, base_checkpoint, finetune_checkpoint,
                              base_inferred_from=checked.base_inferred_from)
        pair.warnings += [*checked.warnings, *tokenizer_warnings(base_checkpoint.tokenizer,
                                                                 finetune_checkpoint.tokenizer)]
    pair.identical = identical_to_base(base, finetune)
    if pair.identical:
        warning = f"{IDENTICAL_WARNING}{pair.identical}"
        pair.warnings.append(warning)
        print(f"drift-audit: warning: {warning}", file=sys.stderr)
    return pair


def pair_from_model(model: Any, tokenizer: Any, *, base: str | None, options: LoadOptions,
                    name: str = "in-memory fine-tune") -> ModelPair:
    """A pair around a model in memory (during training). A peft model is its own base (adapter off);
    a fully fine-tuned model needs `base`, which is loaded from disk beside it."""
    tokenizer = prepare_tokenizer(tokenizer, name, options.chat_template)
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        base_name = base or getattr(next(iter(model.peft_config.values())), "base_model_name_or_path", None) or "base"
        sources = [Source(name=n, path=Path("."), in_memory=True, is_adapter=a) for n, a in ((base_name, False),
                                                                                              (name, True))]
        return ModelPair.lora(sources[0], sources[1], options, Checkpoint(model, tokenizer))
    if base is None:
        raise AuditInputError("auditing a fully fine-tuned model in memory needs the base: pass base=PATH or Hub id.")
    base_source = resolve_source(base, what="base")
    check_weight_format(base_source, "base", allow_pickle=options.allow_pickle)
    return ModelPair.full(base_source, Source(name=name, path=Path("."), in_memory=True), options,
                          _load_checkpoint(base_source, options), Checkpoint(model, tokenizer))


def _torch_dtype(options: LoadOptions) -> torch.dtype:
    return devices.resolve_dtype(options.dtype, _device(options))


def _device(options: LoadOptions) -> Literal["cpu", "cuda"]:
    return devices.resolve_device(options.device)


def _load_checkpoint(source: Source, options: LoadOptions) -> Checkpoint:
    from transformers import AutoModelForCausalLM

    pickled = check_weight_format(source, source.name, allow_pickle=options.allow_pickle)
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(options),
        "trust_remote_code": options.trust_remote_code,
        "gguf_file": source.gguf_file,
    }
    if not source.gguf_file:
        kwargs["use_safetensors"] = not pickled
    if options.device == "auto" and torch.cuda.is_available():
        kwargs["device_map"] = "auto"  # shards across devices with accelerate when one is too small
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError) as exc:
        raise AuditInputError(f"{source.name} cannot be loaded as a causal language model: {exc}") from None
    tokenizer = _load_tokenizer(source, options)
    if "device_map" not in kwargs:
        model.to(_device(options))  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)
    return Checkpoint(model=model, tokenizer=tokenizer)


def _load_tokenizer(source: Source, options: LoadOptions) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.path), gguf_file=source.gguf_file,
                                                  trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise AuditInputError(f"{source.name}: the tokenizer cannot be loaded: {exc}") from None
    return prepare_tokenizer(tokenizer, source.name, options.chat_template)


def _attach_adapter(model: Any, adapter: Source, options: LoadOptions) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise AuditInputError(f"--finetune {adapter.name}: the adapter cannot be attached to --base ({exc}).") from None
    peft_model.eval()
    return peft_model


TOKENIZER_SETTINGS = ("padding_side", "pad_token", "chat_template")  # what prepare_tokenizer may change


@contextmanager
def tokenizer_restored(tokenizer: Any) -> Iterator[Any]:
    """A caller's tokenizer, with the settings `prepare_tokenizer` changes put back when the context closes: a
    trainer that lends its tokenizer to an audit goes on padding on its own side with its own pad token."""
    saved = {name: getattr(tokenizer, name) for name in TOKENIZER_SETTINGS}
    try:
        yield tokenizer
    finally:
        for name, value in saved.items():
            setattr(tokenizer, name, value)


def prepare_tokenizer(tokenizer: Any, name: str, chat_template_file: str | None) -> Any:
    """Left padding, a pad token, and a chat template (the model's own, or `--chat-template`)."""
    if chat_template_file:
        try:
            tokenizer.chat_template = Path(chat_template_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuditInputError(f"--chat-template {chat_template_file} cannot be read ({exc}).") from None
    if not tokenizer.chat_template:
        raise AuditInputError(f"{name} has no chat template, so prompts cannot be rendered as the model sees them "
                              "in chat. Pass --chat-template FILE with a Jinja chat template for this model.")
    if not tokenizer.is_fast:
        raise AuditInputError(f"{name}: the auditor needs a fast (Rust) tokenizer for token offsets; this one is "
                              f"{type(tokenizer).__name__}. Save a tokenizer.json beside the model.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def tokenizer_warnings(base_tok: Any, ft_tok: Any) -> list[str]:
    """Differences that do not stop the audit but change what the models see."""
    if len(base_tok) != len(ft_tok):
        raise AuditInputError(f"the fine-tune's tokenizer has {len(ft_tok)} tokens and the base's {len(base_tok)}; "
                              "their vocabularies must match to compare the models.")
    warnings = []
    if base_tok.get_vocab() != ft_tok.get_vocab():
        warnings.append("tokenizer vocabularies differ in some token strings (same size)")
    if base_tok.chat_template != ft_tok.chat_template:
        warnings.append("chat templates differ: each model's prompts are rendered with its own template")
    if base_tok.all_special_tokens != ft_tok.all_special_tokens:
        warnings.append("special tokens differ between base and fine-tune tokenizers")
    return warnings


def _check_adapter_tokenizer(base_tok: Any, adapter: Source, chat_template_file: str | None) -> list[str]:
    """A LoRA fine-tune is one model with the adapter toggled, and both sides render prompts with the base's
    tokenizer. An adapter trained under another chat template would be replayed under the wrong one, so that is an
    error unless `--chat-template` names the template both sides are rendered with; any other difference between
    the two tokenizers is returned as warnings."""
    if not (adapter.path / "tokenizer_config.json").is_file():
        return []
    from transformers import AutoTokenizer

    adapter_tok = AutoTokenizer.from_pretrained(str(adapter.path))
    own = (adapter_tok.chat_template or "").strip()
    if chat_template_file is None and own and own != (base_tok.chat_template or "").strip():
        raise AuditInputError(
            f"{adapter.name}: the adapter ships a chat template that differs from the base's, and both sides of a "
            "LoRA audit are rendered with one template: the fine-tune would be replayed under a template it was not "
            "trained with. Pass --chat-template FILE with the template both models should be judged under (usually "
            "the adapter's chat_template.jinja).")
    adapter_tok.chat_template = base_tok.chat_template  # one template renders both sides (checked above)
    return tokenizer_warnings(base_tok, adapter_tok)

