"""Where a checkpoint's files are and whether they are safe to load: resolving a name (a folder, a `.gguf` file or
a Hub id, through the local Hub cache), the checks that need no weights in memory (pickled or corrupt weight files,
remote code, an adapter's config, a pair of different architectures), fingerprints of the files, and a fine-tune
that provably computes what its base computes.

Everything here reads files only, so a wrong argument fails in seconds, before `auditor.models` loads any weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auditor.errors import AuditInputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FUNCTION_FILES = (  # besides the weights, every file that changes what a checkpoint computes or how it reads text
    "config.json", "generation_config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
    "vocab.json", "merges.txt",
)


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


def fingerprint(sources: Sequence[Source], settings: dict[str, Any]) -> str:
    """A hash of `settings` (JSON) and of every file that decides what the sources compute (`identity_files`), so a
    cache keyed by it is invalidated by any change to the weights, configs, tokenizer or chat template."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for role, source in enumerate(sources):
        for path in source.identity_files:
            digest.update(f"{role}:{path.name}:{sha256_file(path)}\n".encode())
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


def check_weight_format(source: Source, what: str, *, allow_pickle: bool) -> bool:
    """Refuse pickled weights unless allowed (`--allow-pickle`); check safetensors headers. Returns True if
    pickled."""
    if source.gguf_file:
        return False
    files = source.weight_files
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    if not safetensors and not files:
        raise AuditInputError(f"{what} {source.name}: no weight files (*.safetensors) in {source.path}.")
    if not safetensors:
        if not allow_pickle:
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


def load_config(source: Source, what: str, *, trust_remote_code: bool) -> Any:
    """The model config (for an adapter: the peft config), without loading weights. `trust_remote_code`
    (`--trust-remote-code`) lets a config that names code in its repository run it."""
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
                                          trust_remote_code=trust_remote_code)
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
