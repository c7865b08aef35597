"""Fine-tune with trl and gate the result with drift-audit.

    python examples/train_with_audit.py --base path/to/base-model --data train.jsonl --out runs/my-lora
    python examples/train_with_audit.py --base HuggingFaceTB/SmolLM2-135M-Instruct --data train.jsonl \
        --every-n-steps 50

`train.jsonl` has one {"prompt": "...", "completion": "..."} per line. The LoRA is audited against
its base every N steps with the quick recipe (training stops if that audit fails) and at the end with
the default recipe; reports land in OUT/audit/. The script exits 1 if the final audit fails, so it
can gate a pipeline.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="base chat model (folder or Hub id)")
    parser.add_argument("--data", required=True, help="JSONL with prompt and completion fields")
    parser.add_argument("--out", default="runs/lora", help="output folder for the adapter and the audits")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every-n-steps", type=int, default=None, help="also audit every N steps (quick recipe)")
    parser.add_argument("--recipe", default="default", help="recipe for the final audit")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from auditor import DriftAuditCallback

    rows = load_dataset("json", data_files=args.data, split="train").map(lambda r: {
        "prompt": [{"role": "user", "content": r["prompt"]}],
        "completion": [{"role": "assistant", "content": r["completion"]}]})
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(args.base),
        processing_class=AutoTokenizer.from_pretrained(args.base),
        train_dataset=rows,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        args=SFTConfig(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=8,
                       learning_rate=2e-4, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available()),
    )
    audit = DriftAuditCallback(recipe=args.recipe, every_n_steps=args.every_n_steps,
                               out=f"{args.out}/audit").attach(trainer)
    trainer.train()
    trainer.save_model(args.out)
    final = audit.results[-1]
    print(f"drift audit: {final.verdict} ({args.out}/audit/final/report.html)")
    return 1 if final.verdict == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
