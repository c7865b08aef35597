"""Loading a base model and its fine-tune, safely and with one copy of shared weights.

Sources are resolved to files on disk first (a folder, a `.gguf` file, or a Hub snapshot), then
checked (weight format, remote code, compatibility of the pair) before any weights are loaded, so
a wrong argument fails in seconds, not after minutes of loading.

A LoRA fine-tune is attached to the single base copy and toggled with peft's `disable_adapter`;
a full fine-tune is loaded beside the base, or in turn with `low_memory`.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from auditor.errors import AuditInputError
from auditor.results import FinetuneInfo, ModelInfo
from auditor.verdict import IDENTICAL_WARNING

Side = Literal["base", "finetune"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAYER_PATHS = {  # config.model_type -> attribute path of the decoder block list
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
    "mpt": "transformer.blocks",
}
DEFAULT_LAYER_PATH = "model.layers"  # llama, mistral, qwen2/3, gemma, phi3, olmo, ...
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FUNCTION_FILES = (  # besides the weights, every file that changes what a checkpoint computes or how it reads text
    "config.json", "generation_config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
    "vocab.json", "merges.txt",
)


@dataclass(frozen=True)
class LoadOptions:
    """How to load checkpoints; mirrors the CLI flags of the same names."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    low_memory: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    chat_template: str | None = None


@dataclass(frozen=True)
class Source:
    """A checkpoint resolved to files on disk, with how the user named it."""

    name: str
    path: Path
    gguf_file: str | None = None
    revision: str | None = None
    commit: str | None = None
    is_adapter: bool = False
    in_memory: bool = False  # a model handed over in memory (the training callback): no files to hash

    @property
    def weight_files(self) -> list[Path]:
        if self.in_memory:
            return []
        if self.gguf_file:
            return [self.path / self.gguf_file]
        return sorted(p for p in self.path.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES))

    @property
    def identity_files(self) -> list[Path]:
        """The weights plus the configs, tokenizer files and chat template beside them (a .gguf holds them all)."""
        if self.in_memory or self.gguf_file:
            return self.weight_files
        return self.weight_files + [self.path / name for name in FUNCTION_FILES if (self.path / name).is_file()]

    @property
    def weight_format(self) -> str:
        """What the weights are read from: transformers prefers safetensors when a folder has both."""
        if self.in_memory:
            return "in-memory"
        if self.gguf_file:
            return "gguf"
        suffixes = {p.suffix for p in self.weight_files}
        if ".safetensors" in suffixes:
            return "safetensors"
        return "pickle" if suffixes else "none"

    def describe(self) -> dict[str, Any]:
        """Provenance for results.json: names, revision, resolved commit and weight-file hashes."""
        return {
            "name": self.name,
            "path": str(self.path),
            "revision": self.revision,
            "commit": self.commit,
            "format": self.weight_format,
            "files": {p.name: sha256_file(p) for p in self.weight_files},
        }


def sha256_file(path: Path) -> str:
    """The file's sha256, computed once per (path, size, mtime) in this process."""
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_source(name: str, revision: str | None = None, *, what: str) -> Source:
    """Turn a folder, `.gguf` file or Hub id into a `Source`; `what` ("--base") names the flag in errors."""
    path = Path(name).expanduser()
    if path.exists():
        if revision:
            raise AuditInputError(f"{what} {name} is a local path; {what}-revision only applies to Hub ids.")
        return _local_source(name, path, what)
    if HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return _hub_source(name, revision, what)
    raise AuditInputError(f"{what} {name}: no such file or folder. Give a model folder, a .gguf file or a Hub id "
                          "(org/name).")


def _local_source(name: str, path: Path, what: str) -> Source:
    if path.is_file():
        if path.suffix != ".gguf":
            raise AuditInputError(f"{what} {name} is a file but not a .gguf model. Give the model's folder instead.")
        return Source(name=name, path=path.parent, gguf_file=path.name)
    if (path / "adapter_config.json").is_file():
        return Source(name=name, path=path, is_adapter=True)
    if (path / "config.json").is_file():
        return Source(name=name, path=path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return Source(name=name, path=path, gguf_file=ggufs[0].name)
    hint = f" It holds several .gguf files; name one: {what} {path / ggufs[0].name}." if ggufs else ""
    raise AuditInputError(f"{what} {name} is not a model folder: it has no config.json (full model) or "
                          f"adapter_config.json (PEFT adapter).{hint}")


def _hub_source(repo_id: str, revision: str | None, what: str) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        rev = f" --revision {revision}" if revision else ""
        raise AuditInputError(
            f"{what} {repo_id}{'@' + revision if revision else ''} is not in the local Hugging Face cache and "
            f"the Hub cannot be reached ({type(exc).__name__}). Download it where there is network with "
            f"`hf download {repo_id}{rev}` (it lands in HF_HUB_CACHE), or pass a local folder."
        ) from None
    source = _local_source(repo_id, folder, what)
    return Source(name=repo_id, path=folder, gguf_file=source.gguf_file, revision=revision,
                  commit=folder.name, is_adapter=source.is_adapter)


def infer_base(finetune: Source) -> tuple[str, str]:
    """The base a fine-tune names: an adapter's `base_model_name_or_path`, or a model card's `base_model`.

    Returns (base name, where it was found) so the user can be told which base was used.
    """
    if finetune.is_adapter:
        config = read_adapter_config(finetune, "--finetune")
        base = config.get("base_model_name_or_path")
        if isinstance(base, str) and base:
            return base, "adapter_config.json base_model_name_or_path"
    card = finetune.path / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        match = re.match(r"^---\s*\n(.*?)\n---", text, re.DOTALL)
        if match:
            import yaml

            try:
                meta = yaml.safe_load(match.group(1)) or {}
            except yaml.YAMLError:
                meta = {}
            base = meta.get("base_model") if isinstance(meta, dict) else None
            if isinstance(base, list) and base:
                base = base[0]
            if isinstance(base, str) and base:
                return base, "model card base_model"
    raise AuditInputError(f"--finetune {finetune.name} does not name its base model (no adapter "
                          "base_model_name_or_path, no model card base_model). Pass --base.")


def check_weight_format(source: Source, options: LoadOptions, what: str) -> bool:
    """Refuse pickled weights unless allowed; check safetensors headers. Returns True if pickled."""
    if source.gguf_file:
        return False
    files = source.weight_files
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    if not safetensors and not files:
        raise AuditInputError(f"{what} {source.name}: no weight files (*.safetensors) in {source.path}.")
    if not safetensors:
        if not options.allow_pickle:
            raise AuditInputError(
                f"{what} {source.name} only has pickled weights ({files[0].name}), which can run arbitrary code "
                "when loaded. Convert them to safetensors, or pass --allow-pickle if you trust this checkpoint."
            )
        return True
    from safetensors import safe_open

    for file in safetensors:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise AuditInputError(f"{what} {source.name}: weight file {file.name} is truncated or corrupt ({exc}). "
                                  "Re-download or re-save the checkpoint.") from None
    return False


def read_adapter_config(adapter: Source, what: str) -> dict[str, Any]:
    """adapter_config.json, with the fields peft takes on trust checked: `peft_type`, and for LoRA `r`,
    `lora_alpha` and `target_modules` (peft would fail on them later, as an internal error)."""
    from peft import PeftType

    path = adapter.path / "adapter_config.json"
    where = f"{what} {adapter.name}: adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise AuditInputError(f"{where} cannot be read as JSON ({exc}). Re-save the adapter.") from None
    if not isinstance(config, dict):
        raise AuditInputError(f"{where} must be a JSON object, got {type(config).__name__}.")
    known = sorted(t.value for t in PeftType)
    if config.get("peft_type") not in known:
        raise AuditInputError(f"{where}: peft_type {str(config.get('peft_type'))[:60]!r} is not a peft adapter type "
                              f"(one of {', '.join(known)}).")
    if config["peft_type"] == "LORA":
        for key in ("r", "lora_alpha"):
            value = config.get(key)
            if key in config and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
                                  or (key == "r" and not isinstance(value, int))):
                kind = "a positive integer" if key == "r" else "a positive number"
                raise AuditInputError(f"{where}: {key} must be {kind}, got {str(value)[:60]!r}.")
        targets = config.get("target_modules")
        if not (targets is None or isinstance(targets, str)
                or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
            raise AuditInputError(f"{where}: target_modules must be a module name, a regular expression or a "
                                  f"list of names, got {str(targets)[:60]!r}.")
    return config


def load_config(source: Source, options: LoadOptions, what: str) -> Any:
    """The model config (for an adapter: the peft config), without loading weights."""
    if source.is_adapter:
        from peft import PeftConfig

        read_adapter_config(source, what)

        try:
            return PeftConfig.from_pretrained(str(source.path))
        except (ValueError, OSError, TypeError) as exc:
            raise AuditInputError(f"{what} {source.name}: adapter_config.json cannot be read ({exc}).") from None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source.path), gguf_file=source.gguf_file,
                                          trust_remote_code=options.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise AuditInputError(f"{what} {source.name} needs code from its repository to load. Read that code, "
                                  "then pass --trust-remote-code if you trust it.") from None
        raise AuditInputError(f"{what} {source.name}: config cannot be read ({exc}).") from None
    except OSError as exc:
        raise AuditInputError(f"{what} {source.name}: config cannot be read ({exc}).") from None


ARCH_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")


def check_compatible(base: Source, base_cfg: Any, finetune: Source, ft_cfg: Any) -> None:
    """Stop before heavy work if the two models cannot be compared layer by layer."""
    diffs = [
        f"{key}: {getattr(base_cfg, key, None)} vs {getattr(ft_cfg, key, None)}"
        for key in ARCH_FIELDS
        if getattr(base_cfg, key, None) != getattr(ft_cfg, key, None)
    ]
    if diffs:
        raise AuditInputError(
            f"--base {base.name} and --finetune {finetune.name} are not the same architecture "
            f"({'; '.join(diffs)}). The fine-tune must be a fine-tune of this base."
        )


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


def identical_to_base(base: Source, finetune: Source) -> str | None:
    """Why the fine-tune computes exactly what the base computes, when the files prove it; else None.

    Only proven cases count: a LoRA whose every update B @ A is zero (A or B all zero, nothing else in the
    file), or a full model with the base's config and bit-identical tensors.
    """
    if finetune.is_adapter:
        return _zero_lora(finetune.path / "adapter_model.safetensors")
    if finetune.weight_format != "safetensors" or base.weight_format != "safetensors" or finetune.gguf_file:
        return None
    if _config(base) != _config(finetune):
        return None
    return "its config and every weight tensor equal the base's" if _same_tensors(base, finetune) else None


def _zero_lora(file: Path) -> str | None:
    from safetensors import safe_open

    if not file.is_file():
        return None
    zero: dict[str, bool] = {}
    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            match = re.match(r"^(.+)\.lora_[AB](?:\.[^.]+)?\.weight$", key)
            if not match:
                return None  # modules_to_save, DoRA magnitudes, embeddings: not provably a no-op
            module_zero = not handle.get_tensor(key).any().item()
            zero[match.group(1)] = zero.get(match.group(1), False) or module_zero
    if zero and all(zero.values()):
        return "every LoRA update B @ A is zero, so the adapter does not change the base"
    return None


def _config(source: Source) -> dict[str, Any]:
    config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}


def _same_tensors(base: Source, finetune: Source) -> bool:
    from safetensors import safe_open

    with ExitStack() as stack:
        def tensors(source: Source) -> dict[str, Any]:
            found = {}
            for file in (p for p in source.weight_files if p.suffix == ".safetensors"):
                handle = stack.enter_context(safe_open(str(file), framework="pt"))
                found.update(dict.fromkeys(handle.keys(), handle))
            return found

        ours, theirs = tensors(base), tensors(finetune)
        if ours.keys() != theirs.keys():
            return False
        for key in sorted(ours):  # stops at the first difference: cheap for a real fine-tune
            a, b = ours[key].get_tensor(key), theirs[key].get_tensor(key)
            if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
                return False
    return True


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


@dataclass
class ModelPair:
    """The base and its fine-tune. `use(side)` gives one of them; for a LoRA it toggles the adapter."""

    base: Source
    finetune: Source
    options: LoadOptions
    kind: Literal["lora", "full"]
    base_inferred_from: str | None = None
    identical: str | None = None  # why the fine-tune computes what the base computes (see identical_to_base)
    warnings: list[str] = field(default_factory=list)
    _base: Checkpoint | None = None
    _finetune: Checkpoint | None = None
    _resident: tuple[Side, Checkpoint] | None = None  # low-memory mode: the side loaded last (see _resident_side)

    @contextmanager
    def use(self, side: Side) -> Iterator[Checkpoint]:
        if self.kind == "lora":
            assert self._base is not None
            if side == "finetune":
                yield self._base
            else:
                with self._base.model.disable_adapter():
                    yield self._base
            return
        loaded = self._base if side == "base" else self._finetune
        yield loaded if loaded is not None else self._resident_side(side)

    def _resident_side(self, side: Side) -> Checkpoint:
        """Low-memory mode: the one side kept in memory, loaded only when the other side was the last one used.
        A stage asks for the same side many times in a row (attribution replays the fine-tune under every
        intervention), so reloading on every `use` would read the checkpoint from disk a dozen times."""
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
        digest = hashlib.sha256(json.dumps({
            "dtype": str(_torch_dtype(self.options)), "device": _device(self.options),
            "chat_template": sha256_file(Path(template)) if template else None,
        }, sort_keys=True).encode())
        for role, source in enumerate(sources):
            for path in source.identity_files:
                digest.update(f"{role}:{path.name}:{sha256_file(path)}\n".encode())
        return digest.hexdigest()

    def tokenizer_and_positions(self) -> tuple[Any, int | None]:
        """The base's tokenizer and how many positions its model has (None where its config does not say),
        without loading weights when the two models are loaded in turn (low memory)."""
        if self._base is not None:
            return self._base.tokenizer, getattr(self._base.model.config, "max_position_embeddings", None)
        config = load_config(self.base, self.options, "--base")
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
               base_revision: str | None = None, finetune_revision: str | None = None) -> ModelPair:
    """Resolve and check a base and its fine-tune from their files alone, loading no weights: what can be
    wrong with the names, formats and configs fails here, in seconds. Returns the pair, not yet loaded."""
    finetune = resolve_source(finetune_name, finetune_revision, what="--finetune")
    inferred = None
    if base_name is None:
        base_name, inferred = infer_base(finetune)
        print(f"drift-audit: no --base given; using {base_name} (from the fine-tune's {inferred})", file=sys.stderr)
    base = resolve_source(base_name, base_revision, what="--base")
    if base.is_adapter:
        raise AuditInputError(f"--base {base_name} is a PEFT adapter; the base must be a full model. "
                              "Pass the adapter as --finetune and its base model as --base.")
    check_weight_format(base, options, "--base")
    check_weight_format(finetune, options, "--finetune")
    base_cfg = load_config(base, options, "--base")
    ft_cfg = load_config(finetune, options, "--finetune")
    if not finetune.is_adapter:
        check_compatible(base, base_cfg, finetune, ft_cfg)
    pair = ModelPair(base=base, finetune=finetune, options=options, kind="lora" if finetune.is_adapter else "full",
                     base_inferred_from=inferred)
    full_weights = [p.name for p in finetune.weight_files
                    if not p.name.startswith("adapter_model")] if finetune.is_adapter else []
    if full_weights:
        pair.warnings.append(f"--finetune {finetune.name} holds both a PEFT adapter (adapter_config.json) and full "
                             f"model weights ({', '.join(full_weights[:2])}); it was audited as the adapter. Move "
                             "one of them to its own folder to audit the other.")
        print(f"drift-audit: warning: {pair.warnings[-1]}", file=sys.stderr)
    return pair


def load_pair(base_name: str | None, finetune_name: str, options: LoadOptions, *,
              base_revision: str | None = None, finetune_revision: str | None = None,
              shared_base: Checkpoint | None = None) -> ModelPair:
    """Resolve, check and load a base and its fine-tune (see module docstring).

    With no `base_name`, the base is the one the fine-tune names (see `infer_base`). `shared_base`
    is the base already in memory from an earlier pair (`ModelPair.release_base`), for audits of
    several checkpoints of one run.
    """
    pair = check_pair(base_name, finetune_name, options, base_revision=base_revision,
                      finetune_revision=finetune_revision)
    base, finetune = pair.base, pair.finetune
    if finetune.is_adapter:
        base_checkpoint = shared_base or _load_checkpoint(base, options)
        check_adapter_fits(base_checkpoint.model, finetune)
        peft_model = _attach_adapter(base_checkpoint.model, finetune, options)
        try:
            check_adapter_loaded(peft_model, finetune)
        except AuditInputError:
            peft_model.unload()  # a shared base goes on to the next checkpoint without this adapter
            raise
        pair._base = Checkpoint(peft_model, base_checkpoint.tokenizer)
        pair.warnings += _adapter_tokenizer_warnings(pair._base.tokenizer, finetune)
    else:
        if not options.low_memory:
            pair._base = shared_base or _load_checkpoint(base, options)
            pair._finetune = _load_checkpoint(finetune, options)
            pair.warnings += tokenizer_warnings(pair._base.tokenizer, pair._finetune.tokenizer)
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
        pair = ModelPair(base=sources[0], finetune=sources[1], options=options, kind="lora")
        pair._base = Checkpoint(model, tokenizer)
        return pair
    if base is None:
        raise AuditInputError("auditing a fully fine-tuned model in memory needs the base: pass base=PATH or Hub id.")
    base_source = resolve_source(base, what="base")
    check_weight_format(base_source, options, "base")
    pair = ModelPair(base=base_source, finetune=Source(name=name, path=Path("."), in_memory=True), options=options,
                     kind="full")
    pair._base = _load_checkpoint(base_source, options)
    pair._finetune = Checkpoint(model, tokenizer)
    return pair


def _torch_dtype(options: LoadOptions) -> torch.dtype:
    if options.dtype != "auto":
        return DTYPES[options.dtype]
    return torch.bfloat16 if _device(options) == "cuda" else torch.float32


def _device(options: LoadOptions) -> str:
    if options.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if options.device == "cuda" and not torch.cuda.is_available():
        raise AuditInputError("--device cuda was given but no CUDA device is available. Use --device cpu.")
    return options.device


def _load_checkpoint(source: Source, options: LoadOptions) -> Checkpoint:
    from transformers import AutoModelForCausalLM

    pickled = check_weight_format(source, options, source.name)
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


def _adapter_tokenizer_warnings(base_tok: Any, adapter: Source) -> list[str]:
    if not (adapter.path / "tokenizer_config.json").is_file():
        return []
    from transformers import AutoTokenizer

    return tokenizer_warnings(base_tok, AutoTokenizer.from_pretrained(str(adapter.path)))

