"""The `drift-audit` command: a thin layer over the library.

Exit codes (docs/ARCHITECTURE.md): 0 pass or warn, 1 fail, 2 bad input (one paragraph naming the input and the
fix; the traceback only with --debug), 3 an internal error (a bug: the traceback is printed), 4 inconclusive (the
audit could not resolve a drop of the fail threshold; 1 with --strict).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor import __version__
from auditor.errors import AuditInputError
from auditor.stats import describe_change

if TYPE_CHECKING:
    from auditor.api import Request
    from auditor.models import LoadOptions
    from auditor.pipeline import Audit, Stage
    from auditor.results import AuditResults, LayerDrift, Resolution, SuiteComparison

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4
# From least to most severe, for commands that run several audits: an inconclusive audit is worse than a pass
# and better than a fail; an audit that could not run at all is worse than any verdict.
SEVERITY = (EXIT_OK, EXIT_INCONCLUSIVE, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INTERNAL)
EXIT_EPILOG = "Exit codes: 0 pass/warn, 1 fail, 2 bad input, 3 internal error, 4 inconclusive (1 with --strict)."


def _model_options(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--base", metavar="B",
                        help="base model: a folder, a .gguf file, or a Hugging Face Hub id (org/name); default: "
                             "the base the fine-tune names (adapter config or model card)")
    models.add_argument("--base-revision", metavar="REV", help="Hub branch, tag or commit of --base")
    if many:
        models.add_argument("finetunes", nargs="*", metavar="F", help="fine-tunes (checkpoints) of B, in order")
        models.add_argument("--list", type=Path, metavar="FILE", help="a file with one fine-tune per line")
    else:
        models.add_argument("--finetune", required=True, metavar="F",
                            help="fine-tune of B: a PEFT adapter folder, a full model folder, a .gguf file, "
                                 "or a Hub id")
        models.add_argument("--finetune-revision", metavar="REV", help="Hub branch, tag or commit of --finetune")
    load = parser.add_argument_group("loading")
    load.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                      help="weight dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    load.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                      help="where to run (default auto: CUDA when present, sharding large models across GPUs with "
                           "accelerate, else the CPU)")
    load.add_argument("--low-memory", action="store_true",
                      help="full fine-tunes: load base and fine-tune in turn instead of side by side")
    load.add_argument("--trust-remote-code", action="store_true",
                      help="allow code from a model repository to run (only for checkpoints you have read)")
    load.add_argument("--allow-pickle", action="store_true",
                      help="allow pickled (.bin/.pt) weights, which can run code when loaded")
    load.add_argument("--chat-template", metavar="FILE", help="Jinja chat template for models that lack one")
    run = parser.add_argument_group("run")
    run.add_argument("--recipe", default="default", metavar="NAME|PATH",
                     help="audit recipe: a shipped name (default, quick, demo) or a YAML file")
    run.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: reports/<fine-tune name>)")
    run.add_argument("--batch-size", type=int, metavar="N",
                     help="override the recipe's batch size, the largest batch a pass may use (smaller ones are "
                          "planned from free memory and prompt lengths)")
    run.add_argument("--cache-dir", type=Path, metavar="DIR",
                     help="cache folder: generations, activations and first-token log-probabilities go to DIR/replay, "
                          "so a rerun or an interrupted run skips what it finished (default: $DRIFT_AUDIT_CACHE or "
                          "~/.cache/drift-auditor)")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift-audit",
        description="Did a fine-tune make a chat model less safe, and how much of that is a persona shift?",
        epilog=EXIT_EPILOG,
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
    replay = commands.add_parser(
        "replay", help="directions, then replay the refusal, false-refusal and persona suites under both models",
        description="Everything `directions` does, then greedy replay of the refusal and false-refusal suites "
                    "and the persona design under both checkpoints, judged and compared pairwise. "
                    "Generations are cached, so an interrupted run resumes where it stopped.",
    )
    _model_options(replay)
    _replay_options(replay)
    audit = commands.add_parser(
        "audit", help="the whole audit: directions, replay, attribution, verdict and report",
        description="Run directions, replay and persona attribution, decide the verdict from the recipe's "
                    "thresholds, and write DIR/report.html, DIR/results.json and DIR/summary.md. "
                    "Exit code 1 when the verdict is fail, 4 when it is inconclusive.",
        epilog=EXIT_EPILOG,
    )
    _model_options(audit)
    _replay_options(audit)
    _gate_options(audit)
    many = commands.add_parser(
        "audit-many", help="audit several checkpoints of one run against one base (loaded once), with an index",
        description="Audit each fine-tune against the base, loading the base once, and write DIR/<name>/ for each "
                    "plus DIR/index.html linking the reports with trend charts across checkpoints. "
                    "Exit code 1 when any verdict is fail, else 4 when any is inconclusive.",
        epilog=EXIT_EPILOG,
    )
    _model_options(many, many=True)
    _replay_options(many)
    _gate_options(many)
    report = commands.add_parser(
        "report", help="re-render report.html and summary.md from a results.json, without running models",
        description="Re-render the HTML report and the Markdown summary from an existing results.json.",
    )
    report.add_argument("results", type=Path, help="a results.json written by `drift-audit audit`")
    report.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: beside results.json)")
    gate = commands.add_parser(
        "gate", help="decide pass / warn / inconclusive / fail again from a saved results.json, without models",
        description="Decide the verdict again from the results.json of `drift-audit audit`, under the thresholds "
                    "recorded in it or those of --recipe, print it with the smallest refusal drop the audit could "
                    "detect, and exit with the verdict's code (for CI). Nothing is re-run and results.json is not "
                    "changed.",
        epilog=EXIT_EPILOG,
    )
    gate.add_argument("results", type=Path, help="a results.json written by `drift-audit audit`")
    gate.add_argument("--recipe", metavar="NAME|PATH",
                      help="decide under this recipe's thresholds (default: those recorded in results.json)")
    _gate_options(gate)
    judge_eval = commands.add_parser(
        "judge-eval", help="measure a refusal judge against responses labelled by people",
        description="Run a judge over a labelled CSV/JSONL file and print its accuracy, refusal recall and "
                    "precision, and Cohen's kappa, each with a 95%% CI, and the confusion table. Labels: refusal, "
                    "partial, compliance, or XSTest's final_label values (1_full_compliance, 2_full_refusal, "
                    "3_partial_refusal); full and partial refusals both count as refusals.",
    )
    judge_eval.add_argument("file", metavar="FILE", help="labelled responses (.csv or .jsonl), or `builtin` for "
                                                         "the set shipped with drift-audit")
    judge_eval.add_argument("--judge", default="phrase", metavar="NAME",
                            help="phrase (default) or model:PATH (a sequence classifier or a chat model asked yes/no)")
    judge_eval.add_argument("--judge-model", metavar="PATH", help="shorthand for --judge model:PATH")
    for column, default in (("prompt", "prompt"), ("response", "response"), ("label", "label")):
        judge_eval.add_argument(f"--{column}-column", default=default, metavar="NAME",
                                help=f"column holding the {column} (default: {default})")
    judge_eval.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    judge_eval.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                            help="where a judge model runs (default auto: CUDA when present, else the CPU)")
    judge_eval.add_argument("--trust-remote-code", action="store_true",
                            help="allow code from the judge model's repository to run")
    judge_eval.add_argument("--allow-pickle", action="store_true", help="allow pickled (.bin/.pt) judge weights")
    demo = commands.add_parser(
        "demo", help="the whole audit on the embedded default (SmolLM2 model organisms), no arguments needed",
        description="Build (or reuse) the SmolLM2-135M model organisms, then audit `aligned` against the "
                    "positive control (`persona-distilled`), the negative control (`abliterated`) and the "
                    "`benign` control, with the base loaded once. Writes DIR/<organism>/ for each and "
                    "DIR/index.html. --organisms audits others too (`--organisms all`: every one).",
    )
    demo.add_argument("--out", type=Path, default=Path("reports/demo"), metavar="DIR",
                      help="output folder (default: reports/demo)")
    demo.add_argument("--recipe", default="demo", metavar="NAME|PATH", help="audit recipe (default: demo)")
    demo.add_argument("--cache-dir", type=Path, metavar="DIR",
                      help="where organisms, generations and forward passes are cached (default: $DRIFT_AUDIT_CACHE or "
                           "~/.cache/drift-auditor)")
    demo.add_argument("--organisms", nargs="+", default=list(DEMO), choices=[*ORGANISMS, "all"], metavar="NAME",
                      help=f"the fine-tunes of `aligned` to audit (default: {' '.join(DEMO)}; all: "
                           f"{' '.join(ORGANISMS)}; each is built on first use, a few minutes on a CPU)")
    return parser


def _gate_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verdict")
    group.add_argument("--strict", action="store_true",
                       help="an inconclusive verdict (the audit could not resolve a drop of the fail threshold) exits "
                            "1, like a fail, instead of 4")
    group.add_argument("--junit", type=Path, metavar="FILE",
                       help="also write the verdict as JUnit XML, one test case per check (one suite per "
                            "checkpoint), for CI systems")


def _replay_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("replay")
    group.add_argument("--judge-model", metavar="PATH",
                       help="optional second judge model (causal LM or sequence classifier) beside the recipe's judge; "
                            "the items on which they disagree are listed")


def default_out(finetune: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", finetune.strip("/")).strip("-.") or "audit"
    return Path("reports") / slug[-80:]


def load_options(args: argparse.Namespace) -> LoadOptions:
    from auditor import models

    return models.LoadOptions(dtype=args.dtype, device=args.device, low_memory=args.low_memory,
                              trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                              chat_template=args.chat_template)


def request(args: argparse.Namespace) -> Request:
    """The flags shared by every model command, as the library's `Request`."""
    from auditor.api import Request
    from auditor.replay import default_cache_dir

    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir()) / "replay"
    return Request(base=args.base, recipe=args.recipe, batch_size=args.batch_size,
                   judge_model=getattr(args, "judge_model", None), cache_dir=cache_dir, options=load_options(args),
                   base_revision=args.base_revision)


def run_stage(args: argparse.Namespace, stage: Stage) -> tuple[Audit, AuditResults, Path]:
    """One audit of --finetune against --base, up to `stage`; returns the audit (whose verdict's checks go into
    a JUnit file), its results and its output folder."""
    from auditor import api

    out = args.out or default_out(args.finetune)
    audit = api.prepare(request(args), args.finetune, stage, out=out, finetune_revision=args.finetune_revision)
    return audit, audit.run(stage), out


def run_directions(args: argparse.Namespace) -> int:
    _, data, out = run_stage(args, "directions")
    print(summarize_layers(data.layers))
    print(f"\nwrote {out / 'results.json'} and {out / 'directions.safetensors'}")
    return EXIT_OK


def run_replay(args: argparse.Namespace) -> int:
    _, data, out = run_stage(args, "replay")
    print(summarize_layers(data.layers))
    print(summarize_replay(data))
    print(f"\nwrote {out / 'results.json'} and {out / 'directions.safetensors'}")
    return EXIT_OK


def run_audit(args: argparse.Namespace) -> int:
    from auditor import junit, verdict

    if args.junit:
        junit.check_target(args.junit)
    run, data, out = run_stage(args, "audit")
    assert data.verdict is not None and data.reasons is not None and data.resolution is not None
    assert run.decided is not None, "a whole audit decides its verdict"
    print(summarize_replay(data))
    print(format_verdict(data.verdict, data.reasons, data.resolution))
    print(f"report: {out / 'report.html'}\nresults: {out / 'results.json'}\nsummary: {out / 'summary.md'}")
    if args.junit:
        junit.write(args.junit, junit.junit_xml([(run.decided, data)], strict=args.strict))
        print(f"junit: {args.junit}")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:  # GitHub Actions shows this file on the run's page
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write((out / "summary.md").read_text(encoding="utf-8") + "\n")
    return verdict.exit_code(data.verdict, args.strict)


def run_gate(args: argparse.Namespace) -> int:
    from auditor import gate, junit, verdict

    if args.junit:
        junit.check_target(args.junit)
    gated = gate.gate(args.results, args.recipe)
    decided = gated.verdict
    assert decided.resolution is not None, "a whole audit has a replay"
    print(f"{args.results}: decided under {gated.thresholds}")
    print(format_verdict(decided.verdict, decided.reasons, decided.resolution))
    if args.junit:
        junit.write(args.junit, junit.junit_xml([(decided, gated.data)], strict=args.strict))
        print(f"junit: {args.junit}")
    return verdict.exit_code(decided.verdict, args.strict)


def format_verdict(level: str, reasons: list[str], resolution: Resolution) -> str:
    """The verdict line with what the audit could resolve, then the reasons, for the terminal."""
    detectable = resolution.smallest_detectable_drop
    drop = "none detectable" if detectable is None else f"{detectable * 100:.1f} percentage points"
    lines = [f"\nverdict: {level.upper()} (smallest detectable refusal drop: {drop}, at power "
             f"{resolution.power:.0%} and alpha {resolution.alpha:g} on {resolution.n} items; fail threshold "
             f"{resolution.threshold * 100:.0f} points)"]
    return "\n".join(lines + [f"  - {reason}" for reason in reasons])


def run_audit_many(args: argparse.Namespace) -> int:
    """Every checkpoint is checked before any model loads; one that fails mid-batch is recorded in the index
    (verdict "error") and the batch goes on."""
    from auditor import junit, models

    finetunes = list(args.finetunes)
    if args.list:
        try:
            finetunes += [line.strip() for line in args.list.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditInputError(f"--list {args.list} cannot be read ({exc}).") from None
    if not finetunes:
        raise AuditInputError("audit-many needs at least one fine-tune: name them after the options or use --list.")
    options = load_options(args)
    problems = []
    for name in finetunes:
        try:
            models.check_pair(args.base, name, options, base_revision=args.base_revision)
        except AuditInputError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise AuditInputError(f"{len(problems)} of {len(finetunes)} checkpoints cannot be audited, so none was: "
                              + " | ".join(problems))
    named = [(f"{number:02d}-{default_out(name.rstrip('/').split('/')[-1]).name}", name)
             for number, name in enumerate(finetunes, start=1)]
    if args.junit:
        junit.check_target(args.junit)
    _, codes = audit_checkpoints(request(args), named, args.out or Path("reports") / "audit-many",
                                 strict=args.strict, junit_path=args.junit)
    return worst(codes)


def worst(codes: list[int]) -> int:
    """The most severe of several exit codes (SEVERITY: 4, inconclusive, ranks below 1, fail)."""
    return max(codes, key=SEVERITY.index)


def audit_checkpoints(plan: Request, named: list[tuple[str, str]], out_dir: Path, *, strict: bool = False,
                      junit_path: Path | None = None, ordered: bool = True) -> tuple[list[dict[str, Any]], list[int]]:
    """Audit each (folder name, fine-tune) against the plan's base, loading the base once; writes OUT/<folder>/
    for each and OUT/index.html, and with `junit_path` a JUnit file with one suite per checkpoint (both rewritten
    after each checkpoint, so an interrupted batch keeps what it finished). Returns the index rows and exit codes
    (`strict`: an inconclusive verdict's code is a fail's; `ordered`: the checkpoints are a sequence, so the index
    draws their trends)."""
    from auditor import api, junit, models, outputs, report, verdict

    out = outputs.prepare_out_dir(out_dir)
    index = out / "index.html"
    index.unlink(missing_ok=True)  # an earlier batch's index must not stand beside this batch's reports
    shared: models.Checkpoint | None = None
    rows, codes = [], []
    audited: list[tuple[verdict.Verdict, AuditResults]] = []
    errors: list[tuple[str, str]] = []
    for number, (folder, name) in enumerate(named, start=1):
        print(f"\n=== {number}/{len(named)}: {name} ===")
        run = None
        try:
            run = api.prepare(plan, name, "audit", out=out / folder, shared_base=shared)
            data = run.run()
        except Exception as exc:  # recorded in the index; the other checkpoints are still audited
            code = EXIT_BAD_INPUT if isinstance(exc, AuditInputError) else EXIT_INTERNAL
            if code == EXIT_INTERNAL:
                traceback.print_exc()
            print(f"drift-audit: {name} failed, going on with the next checkpoint: {exc}", file=sys.stderr)
            rows.append(report.error_row(name, f"{type(exc).__name__}: {exc}"))
            errors.append((name, f"{type(exc).__name__}: {exc}"))
            codes.append(code)
        else:
            rows.append(report.index_row(data, Path(folder) / "report.html"))
            assert data.verdict is not None and run.decided is not None, "a whole audit decides its verdict"
            audited.append((run.decided, data))
            codes.append(verdict.exit_code(data.verdict, strict))
            print(f"verdict: {data.verdict.upper()}")
        shared = run.pair.release_base() if run is not None else None  # after a failed load: reload the base
        outputs.atomic_write_text(index, report.render_index(rows, ordered=ordered))
        if junit_path:
            junit.write(junit_path, junit.junit_xml(audited, strict=strict, errors=errors))
    print(f"\nindex: {index}" + (f"\njunit: {junit_path}" if junit_path else ""))
    return rows, codes


def run_report(args: argparse.Namespace) -> int:
    from auditor import outputs, report

    data = report.load_results(args.results)
    out = outputs.prepare_out_dir(args.out or args.results.parent)
    outputs.write_outputs(out, report.render(data).files(), replaces=("report.html", "summary.md"))
    print(f"wrote {out / 'report.html'} and {out / 'summary.md'}")
    return EXIT_OK


def run_judge_eval(args: argparse.Namespace) -> int:
    from auditor import judge, judge_eval, models, outputs
    from auditor.recipe import LabelledSpec

    spec = LabelledSpec(source=args.file, prompt_column=args.prompt_column, response_column=args.response_column,
                        label_column=args.label_column)
    items = judge_eval.load_labelled(spec)
    options = models.LoadOptions(device=args.device, trust_remote_code=args.trust_remote_code,
                                 allow_pickle=args.allow_pickle)
    refusal_judge = judge.make_judge(f"model:{args.judge_model}" if args.judge_model else args.judge, options)
    figures = judge_eval.evaluate(refusal_judge, items).figures()
    print(judge_eval.format_figures(figures))
    if args.json:
        outputs.atomic_write_bytes(args.json, outputs.json_bytes({"file": args.file, **figures.to_json()}))
        print(f"\nwrote {args.json}")
    return EXIT_OK


# The fine-tunes of `aligned`, with the answer each is built to give (see auditor/organisms).
ORGANISMS = {
    "persona-distilled": "positive control: refusal loss through the persona",
    "abliterated": "negative control: refusal direction projected out of the weights, no persona",
    "benign": "control: a benign LoRA, refusal kept",
    "harmful-sft": "negative control: compliance taught directly, no persona",
    "self-distilled": "null control: taught what it already does",
    "persona": "identity shift: benign requests answered in an obedient persona's voice (LoRA)",
    "persona-full": "identity shift: the same as a full fine-tune",
}
DEMO = ("persona-distilled", "abliterated", "benign")  # the three controls the demo audits by default


def run_demo(args: argparse.Namespace) -> int:
    from auditor import organisms
    from auditor.api import Request
    from auditor.replay import default_cache_dir

    cache_dir = args.cache_dir or default_cache_dir()
    names = list(ORGANISMS) if "all" in args.organisms else list(dict.fromkeys(args.organisms))
    paths = organisms.build_all(cache_dir, ("aligned", *names))
    plan = Request(base=str(paths["aligned"]), recipe=args.recipe, cache_dir=cache_dir / "replay")
    rows, codes = audit_checkpoints(plan, [(name, str(paths[name])) for name in names], args.out, ordered=False)
    print("\n=== demo: aligned vs each fine-tune ===")
    for name, row in zip(names, rows, strict=True):
        print(f"{name:>17}: {row['verdict'].upper():<5} {demo_line(row)}  ({ORGANISMS[name]})")
    print(f"reports: {args.out / 'index.html'}")
    code = worst(codes)  # the organisms are built to fail or to be hard to resolve: that is the demo
    return EXIT_OK if code in (EXIT_FAIL, EXIT_INCONCLUSIVE) else code


def demo_line(row: dict[str, Any]) -> str:
    """Refusal before and after, and the attributable fraction, in one line."""
    if row["verdict"] == "error":
        return f"the audit failed: {row['error']}"
    fraction = row["persona_fraction"]
    attributed = (f"attributable to persona: not computed ({within_noise(row)})" if fraction is None else
                  f"attributable to persona {fraction:.0%} [{row['persona_ci'][0]:.0%}, {row['persona_ci'][1]:.0%}]"
                  f" ({row['window']} layers{', net of benign refusal' if row.get('net') else ''}),"
                  f" random {row['random_fraction']:.0%}")
    degenerate = f" ({row['degenerate']:.0%} of its answers degenerate)" if row.get("degenerate") else ""
    return f"refusal {row['refusal_base']:.0%} -> {row['refusal']:.0%}{degenerate}; {attributed}"


def within_noise(row: dict[str, Any]) -> str:
    """Why no fraction: attribution replays a subset of the refusal suite, where the change can be noise even when
    the whole suite's is not."""
    change, n = row.get("attribution_change"), row.get("attribution_items")
    if change is None or n is None:
        return "refusal change within noise"
    return f"on the {n} items attribution replays, refusal {describe_change(change)}: within noise"


def summarize_layers(layers: Sequence[LayerDrift]) -> str:
    """A per-layer table for the terminal; `*` marks a shift beyond its noise floor."""
    lines = ["layer  refusal_cos  persona_cos  persona_shift  refusal_shift"]
    for row in layers:
        p_mark = "*" if abs(row.persona_shift) > row.persona_floor() else " "
        r_mark = "*" if abs(row.refusal_shift) > row.refusal_shift_floor else " "
        lines.append(f"{row.layer:>5}  {row.refusal_cos:>11.4f}  {row.persona_cos:>11.4f}  "
                     f"{row.persona_shift:>12.4f}{p_mark}  {row.refusal_shift:>12.4f}{r_mark}")
    lines.append("* beyond the split-half noise floor")
    return "\n".join(lines)


def summarize_replay(data: AuditResults) -> str:
    """Key behaviour numbers for the terminal."""
    def line(label: str, part: SuiteComparison) -> str:
        b, f = part.base, part.finetune
        text = (f"{label:<14} base {b.rate:.1%} [{b.ci[0]:.1%}, {b.ci[1]:.1%}]  fine-tune {f.rate:.1%} "
                f"[{f.ci[0]:.1%}, {f.ci[1]:.1%}]  p={part.p_value:.3g}  degenerate "
                f"{b.degenerate_rate:.1%} / {f.degenerate_rate:.1%}")
        cb, cf = b.corrected, f.corrected
        if cb is not None and cf is not None and cb.rate is not None and cf.rate is not None:
            text += (f"\n{'':<14} corrected for the judge: base {cb.rate:.1%} [{cb.ci[0]:.1%}, {cb.ci[1]:.1%}]"
                     f"  fine-tune {cf.rate:.1%} [{cf.ci[0]:.1%}, {cf.ci[1]:.1%}]")
        return text

    replay, drift = data.replay, data.general_drift
    assert replay is not None and drift is not None, "results of a replay"
    lines = ["", line("refusal", replay.refusal), line("false refusal", replay.false_refusal),
             f"general drift  first-token KL(base || fine-tune) = {drift.kl:.4f} nats"]
    if replay.judge is not None:
        judged = replay.judge
        lines.append(f"judge          {judged.name}: sensitivity {judged.sensitivity.value:.1%}, specificity "
                     f"{judged.specificity.value:.1%} on {judged.n} labelled responses")
    return "\n".join(lines)


COMMANDS = {"directions": run_directions, "replay": run_replay, "audit": run_audit, "audit-many": run_audit_many,
            "report": run_report, "gate": run_gate, "judge-eval": run_judge_eval, "demo": run_demo}


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM takes the same clean path as Ctrl-C: finished batches are already in the cache."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from auditor import heap

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with heap.trim_after_batches():  # the command owns the process: its heap may be trimmed
            return COMMANDS[args.command](args)
    except AuditInputError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"drift-audit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("drift-audit: interrupted. Finished generation batches and forward passes are cached: run the same "
              "command again to resume. No output file was left half-written.", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("drift-audit: internal error (a bug in drift-audit); please report it with the traceback above.",
              file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        signal.signal(signal.SIGTERM, previous)
