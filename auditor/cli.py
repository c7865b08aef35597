"""The `drift-audit` command: a thin layer over the library.

Exit codes (DESIGN.md): 0 pass or warn, 1 fail, 2 bad input (one paragraph naming the input and the
fix; the traceback only with --debug), 3 an internal error (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from auditor import __version__
from auditor.errors import AuditInputError

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _model_options(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--base", required=True, metavar="B",
                        help="base model: a folder, a .gguf file, or a Hugging Face Hub id (org/name)")
    models.add_argument("--finetune", required=True, metavar="F",
                        help="fine-tune of B: a PEFT adapter folder, a full model folder, a .gguf file, or a Hub id")
    models.add_argument("--base-revision", metavar="REV", help="Hub branch, tag or commit of --base")
    models.add_argument("--finetune-revision", metavar="REV", help="Hub branch, tag or commit of --finetune")
    load = parser.add_argument_group("loading")
    load.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                      help="weight dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    load.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                      help="where to run; auto uses CUDA if present and shards large models with accelerate")
    load.add_argument("--low-memory", action="store_true",
                      help="full fine-tunes: load base and fine-tune in turn instead of side by side")
    load.add_argument("--trust-remote-code", action="store_true",
                      help="allow code from a model repository to run (only for checkpoints you have read)")
    load.add_argument("--allow-pickle", action="store_true",
                      help="allow pickled (.bin/.pt) weights, which can run code when loaded")
    load.add_argument("--chat-template", metavar="FILE", help="Jinja chat template for models that lack one")
    run = parser.add_argument_group("run")
    run.add_argument("--recipe", default="default", metavar="NAME|PATH",
                     help="audit recipe: a shipped name (default, quick) or a YAML file")
    run.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: reports/<fine-tune name>)")
    run.add_argument("--batch-size", type=int, metavar="N", help="override the recipe's batch size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift-audit",
        description="Did a fine-tune make a chat model less safe, and how much of that is a persona shift?",
        epilog="Exit codes: 0 pass/warn, 1 fail, 2 bad input, 3 internal error.",
    )
    parser.add_argument("--version", action="version", version=f"drift-audit {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks for input errors too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    directions = commands.add_parser(
        "directions", help="refusal and persona directions per layer, and how far the fine-tune moved them",
        description="Capture residual-stream activations of both models, compute the refusal and persona "
                    "directions per layer, and write DIR/results.json and DIR/directions.safetensors.",
    )
    _model_options(directions)
    return parser


def default_out(finetune: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", finetune.strip("/")).strip("-.") or "audit"
    return Path("reports") / slug[-80:]


def run_directions(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from auditor import directions, models, recipe, results

    timings = results.Timings()
    started = time.perf_counter()
    audit_recipe = recipe.load_recipe(args.recipe)
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise AuditInputError(f"--batch-size must be at least 1, got {args.batch_size}.")
        audit_recipe = replace(audit_recipe, batch_size=args.batch_size)
    out = results.prepare_out_dir(args.out or default_out(args.finetune))
    options = models.LoadOptions(dtype=args.dtype, device=args.device, low_memory=args.low_memory,
                                 trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                                 chat_template=args.chat_template)
    with timings.stage("load"):
        pair = models.load_pair(args.base, args.finetune, options, base_revision=args.base_revision,
                                finetune_revision=args.finetune_revision)
    with timings.stage("directions"):
        measured = directions.measure(pair, audit_recipe)
    base_info, finetune_info = pair.describe()
    directions.save_directions(out / "directions.safetensors", measured,
                               {"base": args.base, "finetune": args.finetune})
    by_position = directions.layers_json(measured)
    timings["total"] = round(time.perf_counter() - started, 3)
    data: dict[str, Any] = {
        "schema": results.SCHEMA,
        "base": base_info,
        "finetune": finetune_info,
        "recipe": asdict(audit_recipe),
        "position": audit_recipe.positions[0],
        "layers": by_position[audit_recipe.positions[0]],
        "layers_by_position": by_position,
        "prompt_counts": measured.counts,
        "warnings": pair.warnings,
        "timings": dict(timings),
        "environment": results.environment(args.device, args.dtype),
    }
    results.write_json(out / "results.json", data)
    print(summarize_layers(data["layers"]))
    print(f"\nwrote {out / 'results.json'} and {out / 'directions.safetensors'}")
    return EXIT_OK


def summarize_layers(layers: list[dict[str, Any]]) -> str:
    """A per-layer table for the terminal; `*` marks a shift beyond its noise floor."""
    lines = ["layer  refusal_cos  persona_cos  persona_shift  refusal_shift"]
    for row in layers:
        p_mark = "*" if abs(row["persona_shift"]) > row["persona_shift_floor"] else " "
        r_mark = "*" if abs(row["refusal_shift"]) > row["refusal_shift_floor"] else " "
        lines.append(f"{row['layer']:>5}  {row['refusal_cos']:>11.4f}  {row['persona_cos']:>11.4f}  "
                     f"{row['persona_shift']:>12.4f}{p_mark}  {row['refusal_shift']:>12.4f}{r_mark}")
    lines.append("* beyond the split-half noise floor")
    return "\n".join(lines)


COMMANDS = {"directions": run_directions}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AuditInputError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"drift-audit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("drift-audit: interrupted; finished output files are complete, nothing else was written.",
              file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("drift-audit: internal error (a bug in drift-audit); please report it with the traceback above.",
              file=sys.stderr)
        return EXIT_INTERNAL
