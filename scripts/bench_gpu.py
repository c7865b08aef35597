"""GPU throughput benchmark (issue 15): replay tokens per second against the card's limit, and an audit's phases.

    python scripts/bench_gpu.py [--config llama-3.1-8b] [--prompts 256] [--new-tokens 128] [--batch-size 256]
        [--batch-sizes 16,64,256] [--loop-prompts 8] [--audit-recipe default | --no-audit]

Speed depends on shapes, not on weights, so nothing is downloaded: the model is built from a published
configuration (Llama-3.1-8B's by default) with random bfloat16 weights on the device, with a random LoRA
adapter (rank 16 on every attention and MLP projection) and a word-level tokenizer built in code over the
whole vocabulary. Random weights stop at random, so every generation is held to exactly --new-tokens new
tokens (the stop tokens' logits are set to -inf while the replays are timed), and tokens per second count what
was generated.

Printed side by side, from one run, on the fine-tune (adapter on, as the audit replays it) and the default
recipe's refusal and benign items: a per-prompt `generate` loop (--loop-prompts of them), plain batched
`generate` (left-padded, at each of --batch-sizes, the best kept), the same at the best batch size with a static
key/value cache (on CUDA transformers compiles its decode step: run twice, the first run compiling; issue 15 asks
for it where it measurably helps, and this line is that measurement), and the auditor's replay
(`auditor.replay.generate`, batches planned from free memory up to --batch-size, shared prefixes reused);
then the card's limit for one decode step at the auditor's batch size: the larger of reading every weight once
(weight bytes / memory bandwidth) and computing it (2 x parameters x batch / peak bfloat16 FLOP/s),
from the datasheet figures in CARDS or --bandwidth and --peak-flops. The key/value cache's reads are left
out of the limit, so it is an upper bound. Issue 15's goals: the auditor at >= 40% of that limit and >= 2x
plain batched `generate` at its best. Last, unless --no-audit, a whole audit of the in-memory pair (adapter off:
the base) under --audit-recipe, with its wall time per phase (the issue's goal for `default` on an 8B LoRA
pair on one H200: <= 10 minutes); on random weights the judge's labels are noise, so attribution may find
the refusal change within noise and skip its replays.

`tests/test_bench_scripts.py` runs it on a tiny configuration on the CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import benchkit
import torch
from bench_replay import suite_items

from auditor.activations import ChatPrompt, render
from auditor.api import audit_model
from auditor.batching import input_device
from auditor.hooks import forward_hooks
from auditor.inputs import load_inputs
from auditor.models import Checkpoint, LoadOptions, prepare_tokenizer
from auditor.recipe import load_recipe
from auditor.replay import GenerationCache, generate, stop_ids

CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "max_position_embeddings": 8192, "rope_theta": 500000.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 2048},
}
# Datasheet memory bandwidth (bytes/s) and dense bfloat16 peak (FLOP/s), matched against the device's name.
CARDS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12), "A100": (2.0e12, 312e12)}
CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
LIMIT_SHARE_TARGET = 0.4
PLAIN_TARGET = 2.0


@dataclass(frozen=True)
class Throughput:
    """New tokens per second of one way to replay, and how it was run."""

    name: str
    tokens: int
    seconds: float
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.tokens / self.seconds

    def line(self) -> str:
        return (f"{self.name:<34} {self.per_second:10.1f} new tokens/s "
                f"({self.tokens} in {self.seconds:.2f} s{self.note})")


def make_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over the whole vocabulary (most prompt words are unknown: lengths are what count)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + [f"w{i}" for i in range(vocab_size - len(SPECIALS))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    return fast


def make_finetune(config_name: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    """The random model with a random LoRA adapter (peft), on `device`."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(CONFIGS[config_name]["vocab_size"])
    config = LlamaConfig(**CONFIGS[config_name], tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    model.eval()
    model.requires_grad_(False)
    return Checkpoint(model, prepare_tokenizer(tokenizer, f"random {config_name}", None))


@contextmanager
def never_stopping(checkpoint: Checkpoint) -> Iterator[None]:
    """Random weights stop at random: inside, the stop tokens' logits are -inf, so every generation runs to its
    full length, whichever way it is run (the auditor's replay applies no generation config, so the config's
    `min_new_tokens` could not do this)."""
    stops = stop_ids(checkpoint)

    def ban(module: torch.nn.Module, args: object, logits: torch.Tensor) -> torch.Tensor:
        logits[..., stops] = float("-inf")
        return logits

    with forward_hooks([(checkpoint.model.get_output_embeddings(), ban)]):
        yield


def timed_tokens(name: str, call: Callable[[], int], device: torch.device, note: str = "") -> Throughput:
    """Run `call` (it returns how many new tokens it generated) after the device has finished earlier work."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, tokens = benchkit.timed(call)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Throughput(name, tokens, seconds, note)


def per_prompt_loop(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt], new_tokens: int) -> int:
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    total = 0
    for prompt in prompts:
        ids = torch.tensor([render(tokenizer, prompt).ids], device=input_device(model))
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(checkpoint))
        total += output.shape[1] - ids.shape[1]
    return total


def plain_batched(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt], new_tokens: int, batch_size: int,
                  static: bool = False) -> int:
    """What a script without the auditor does: the prompts in order, `batch_size` at a time, left-padded. With
    `static`, a static key/value cache, which transformers compiles the decode step for on CUDA (prompts padded to
    a multiple of 64 tokens, so few shapes are compiled)."""
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.user}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    extra: dict[str, Any] = {"cache_implementation": "static"} if static else {}
    total = 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          pad_to_multiple_of=64 if static else None, add_special_tokens=False).to(input_device(model))
        output = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids(checkpoint), **extra)
        total += (output.shape[1] - batch["input_ids"].shape[1]) * output.shape[0]
    return total


def auditor_replay(checkpoint: Checkpoint, prompts: Sequence[ChatPrompt], new_tokens: int, batch_size: int) -> int:
    generations = generate(checkpoint, prompts, max_new_tokens=new_tokens, batch_size=batch_size,
                           cache=GenerationCache.in_memory(), share_prefix=True)
    return sum(len(g.token_ids) for g in generations)


def card_limit(model: torch.nn.Module, batch: int, bandwidth: float, peak_flops: float) -> tuple[float, str]:
    """New tokens per second one decode step at `batch` can reach at most, and which bound sets it."""
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    memory, compute = weight_bytes / bandwidth, 2 * parameters * batch / peak_flops
    return batch / max(memory, compute), ("memory-bound" if memory >= compute else "compute-bound")


def card_figures(device: torch.device, bandwidth: float | None, peak_flops: float | None) -> tuple[float, float, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    known = next((figures for card, figures in CARDS.items() if card in name), None)
    if bandwidth and peak_flops:
        return bandwidth, peak_flops, f"{name} (figures given)"
    if known is None:
        raise SystemExit(f"no datasheet figures for {name!r}: pass --bandwidth BYTES_PER_S and --peak-flops FLOP_PER_S")
    return known[0], known[1], f"{name} (datasheet: {known[0] / 1e12:g} TB/s, {known[1] / 1e12:g} TFLOP/s bf16)"


def run(args: argparse.Namespace) -> list[str]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bandwidth, peak, card = card_figures(device, args.bandwidth, args.peak_flops)
    started = time.perf_counter()
    checkpoint = make_finetune(args.config, device, dtype)
    built = time.perf_counter() - started
    prompts = [ChatPrompt(item.prompt) for item in suite_items(args.prompts)]
    lines = [f"{args.config} with a random rank-16 LoRA, {dtype}, on {card}; built in {built:.1f} s",
             f"{len(prompts)} prompts, exactly {args.new_tokens} new tokens each"]
    with never_stopping(checkpoint):
        lines += replay_lines(args, checkpoint, prompts, device, bandwidth, peak)
    if args.audit_recipe:
        recipe = load_recipe(args.audit_recipe)
        started = time.perf_counter()
        data = audit_model(checkpoint.model, checkpoint.tokenizer, base=None, recipe=recipe,
                           inputs=load_inputs(recipe, replay=True), out=None,
                           options=LoadOptions(device=device.type), name=f"random {args.config} + LoRA")
        phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in data.timings.items())
        lines.append(f"audit of the pair under recipe {args.audit_recipe}: {time.perf_counter() - started:.1f} s "
                     f"({phases}); verdict {data.verdict}")
    return lines


def replay_lines(args: argparse.Namespace, checkpoint: Checkpoint, prompts: Sequence[ChatPrompt],
                 device: torch.device, bandwidth: float, peak: float) -> list[str]:
    """Tokens per second of each way to replay, the card's limit and both goals' verdicts."""
    auditor_replay(checkpoint, prompts[:2], args.new_tokens, 2)  # warm-up: kernels, allocator
    loop = timed_tokens("per-prompt generate loop", lambda: per_prompt_loop(
        checkpoint, prompts[:args.loop_prompts], args.new_tokens), device, f", {args.loop_prompts} prompts")
    plain = [timed_tokens(f"plain batched generate, batch {size}", lambda size=size: plain_batched(
        checkpoint, prompts, args.new_tokens, size), device) for size in args.batch_sizes]
    best = max(plain, key=lambda t: t.per_second)
    best_size = args.batch_sizes[plain.index(best)]
    static = [timed_tokens(f"static cache{' (compiled decode)' if device.type == 'cuda' else ''}, {attempt}",
                           lambda: plain_batched(checkpoint, prompts, args.new_tokens, best_size, static=True),
                           device, f", batch {best_size}") for attempt in ("first run", "second run")]
    ours = timed_tokens("auditor replay", lambda: auditor_replay(checkpoint, prompts, args.new_tokens,
                                                                  args.batch_size), device,
                        f", batches planned up to {args.batch_size}")
    batch = min(args.batch_size, len(prompts))
    limit, bound = card_limit(checkpoint.model, batch, bandwidth, peak)
    share = ours.per_second / limit
    return [t.line() for t in (loop, *plain, *static, ours)] + [
              f"card's limit at batch {batch}: {limit:.1f} new tokens/s ({bound}; key/value cache reads left out)",
              f"auditor at {share:.1%} of the card's limit (target >= {LIMIT_SHARE_TARGET:.0%}: "
              f"{'reached' if share >= LIMIT_SHARE_TARGET else 'NOT reached'})",
              benchkit.ratio_line(f"auditor vs plain batched generate at its best ({best.name.split(', ')[-1]})",
                                  best.seconds / best.tokens, ours.seconds / ours.tokens, PLAIN_TARGET),
              f"static cache against the plain batched generate at batch {best_size}: "
              f"{static[1].per_second / best.per_second:.2f}x in the second run "
              f"({'the first compiles' if device.type == 'cuda' else 'nothing is compiled on the CPU'})"]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="llama-3.1-8b")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--loop-prompts", type=int, default=8, help="prompts for the per-prompt loop (it is slow)")
    parser.add_argument("--batch-sizes", type=lambda text: [int(x) for x in text.split(",")], default=[16, 64, 256],
                        help="plain batched generate's batch sizes to try (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=256, help="the auditor's largest batch")
    parser.add_argument("--bandwidth", type=float, help="memory bandwidth in bytes/s (default: from CARDS)")
    parser.add_argument("--peak-flops", type=float, help="dense bfloat16 peak in FLOP/s (default: from CARDS)")
    parser.add_argument("--audit-recipe", default="default", help="recipe of the whole audit at the end")
    parser.add_argument("--no-audit", dest="audit_recipe", action="store_const", const=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    print("\n".join(run(parse())))
