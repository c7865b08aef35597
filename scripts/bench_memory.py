"""Memory benchmark: what the auditor holds, measured side by side in fresh processes.

    .venv/bin/python scripts/bench_memory.py            # uses the SmolLM2 organisms (builds them if needed)

1. Loading a LoRA pair (the adapter toggled on one base copy) against loading the same fine-tune as a
   second full model beside the base (what a naive audit does), each followed by a forward pass
   through both sides (safetensors are memory-mapped, so weights count only once touched): peak RSS
   of each, and their ratio.
2. Capturing activations with hooks that reduce each block's output on the fly, against keeping
   every layer's full hidden states (`output_hidden_states=True`): peak RSS and wall time of each.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from auditor import models
from auditor.activations import ChatPrompt, capture, render
from auditor.batching import left_pad
mode, base, finetune, merged = sys.argv[1:5]
start = time.perf_counter()
pair = models.load_pair(base, merged if mode == "two-models" else finetune, models.LoadOptions())
if mode in ("lora-pair", "two-models"):
    for side in ("base", "finetune"):  # a forward pass pages in every weight, as an audit does
        with pair.loaded(side) as checkpoint, torch.inference_mode():
            checkpoint.model(input_ids=torch.tensor([[1, 2, 3]]))
else:
    prompts = [ChatPrompt(f"Give me a detailed, step by step plan for project number {i}, please.") for i in range(256)]
    with pair.loaded("base") as checkpoint:
        if mode == "capture-hooks":
            capture(checkpoint, prompts, ["post_instruction", "last"], batch_size=32)
        else:
            kept = []
            with torch.inference_mode():
                for i in range(0, len(prompts), 32):
                    group = [render(checkpoint.tokenizer, p) for p in prompts[i:i + 32]]
                    batch = left_pad([r.ids for r in group], checkpoint.tokenizer.pad_token_id, torch.device("cpu"))
                    out = checkpoint.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                           output_hidden_states=True)
                    kept.append([h.clone() for h in out.hidden_states])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start}))
"""


def measure(mode: str, paths: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, paths["aligned"], paths["persona"], paths["merged"]],
                         capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def merged_persona(paths: dict[str, str]) -> str:
    """The persona LoRA merged into a full model (once), for the naive two-model comparison."""
    from pathlib import Path

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(paths["persona"] + "-merged")
    if not target.is_dir():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(paths["aligned"]), paths["persona"])
        model.merge_and_unload().save_pretrained(target)
        AutoTokenizer.from_pretrained(paths["aligned"]).save_pretrained(target)
    return str(target)


def main() -> None:
    from auditor import organisms
    from auditor.replay import default_cache_dir

    built = organisms.build_all(default_cache_dir())
    paths = {name: str(path) for name, path in built.items()}
    paths["merged"] = merged_persona(paths)
    rows = {mode: measure(mode, paths) for mode in ("lora-pair", "two-models", "capture-hooks", "capture-full")}
    for mode, row in rows.items():
        print(f"{mode:>14}: peak RSS {row['peak_rss_mb']:8.0f} MB   {row['seconds']:6.1f} s")
    ratio = rows["two-models"]["peak_rss_mb"] / rows["lora-pair"]["peak_rss_mb"]
    print(f"two full models / LoRA pair, peak RSS: {ratio:.2f}x")
    print(f"full hidden states / on-the-fly hooks, peak RSS: "
          f"{rows['capture-full']['peak_rss_mb'] / rows['capture-hooks']['peak_rss_mb']:.2f}x, wall time: "
          f"{rows['capture-full']['seconds'] / rows['capture-hooks']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
