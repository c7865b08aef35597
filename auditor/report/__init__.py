"""The HTML audit report and the Markdown summary, rendered from the typed results alone (a run's, or a
results.json read back by `load_results`).

One self-contained HTML file: CSS and SVG charts inline, no script, no external URL, so it opens
offline and can be attached to a review. Jinja2 autoescaping is on for every template; model
responses are also truncated and shown collapsed, so harmful text is never expanded by default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from auditor import schema
from auditor.errors import AuditInputError
from auditor.judge import is_refusing
from auditor.report import charts
from auditor.results import Attribution, AuditResults, LayerDrift, Replay, furthest_persona_shift
from auditor.stats import describe_change

SHOWN_CHARS = 300


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("auditor.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{v:.1%}"
    env.filters["ci"] = lambda ci: "n/a" if not ci else f"[{ci[0]:.1%}, {ci[1]:.1%}]"
    env.filters["num"] = lambda v, digits=3: "n/a" if v is None else f"{v:.{digits}g}"
    env.filters["points"] = lambda v: "n/a" if v is None else f"{v * 100:+.1f}"  # a difference of two rates
    env.filters["points_ci"] = lambda ci: "n/a" if not ci else f"[{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]"
    env.filters["change"] = lambda v: "n/a" if v is None else describe_change(-v)  # fine-tune minus base, in words
    env.filters["outcome"] = outcome
    env.filters["truncate_text"] = lambda text: text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " [...]"
    return env


def layer_charts(layers: Sequence[LayerDrift]) -> list[Any]:
    """The four per-layer charts with their noise-floor bands."""
    if not layers:
        return []
    col = {f.name: [getattr(row, f.name) for row in layers] for f in fields(LayerDrift)}
    return [
        charts.line_chart("refusal_cos: base vs fine-tune refusal direction",
                          [charts.Series("cosine", col["refusal_cos"])],
                          band=[(f, 1.0) for f in col["refusal_cos_floor"]], reference=1.0),
        charts.line_chart("persona_cos: base vs fine-tune persona direction",
                          [charts.Series("cosine", col["persona_cos"], charts.COLOURS[2])],
                          band=[(f, 1.0) for f in col["persona_cos_floor"]], reference=1.0),
        charts.line_chart("persona_shift (1.0 = as far as the persona prompt)",
                          [charts.Series("shift", col["persona_shift"], charts.COLOURS[1])],
                          band=[(-row.persona_floor(), row.persona_floor()) for row in layers], reference=0.0),
        charts.line_chart("refusal_shift on harmful prompts (units of |r|)",
                          [charts.Series("shift", col["refusal_shift"], charts.COLOURS[3])],
                          band=[(-f, f) for f in col["refusal_shift_floor"]], reference=0.0),
    ]


def persona_heatmap(replay: Replay | None) -> Any:
    rows = replay.personas.personas if replay else []
    if not rows:
        return None
    return charts.heatmap("False-refusal rate by persona", [r.name or r.id for r in rows],
                          ["base", "fine-tune"], [[r.base.rate, r.finetune.rate] for r in rows])


def gating_chart(attribution: Attribution | None) -> Any:
    curve = attribution.gating.curve if attribution else []
    if not curve:
        return None
    return charts.rate_curve("Base refusal rate when steered toward the compliant persona",
                             [c.strength for c in curve], [c.rate for c in curve], [list(c.ci) for c in curve],
                             "steering strength (units of the persona direction)")


def explain_attribution(attribution: Attribution | None) -> list[str]:
    """What the attribution numbers mean, in plain words, for a reviewer who has not read the method."""
    if not attribution or attribution.persona_fraction is None or not attribution.ci:
        return []
    fraction, (low, high) = attribution.persona_fraction, attribution.ci
    window = attribution.headline()
    span = attribution.layer_range or (window.layers if window else None)  # older files lack the range
    assert span is not None, "a computed fraction comes from one window of layers"
    first, last = span
    random = attribution.random_fraction
    sentences = [
        f"On these {attribution.base.n} harmful prompts the base refuses {attribution.base.rate:.0%} and "
        f"the fine-tune {attribution.finetune.rate:.0%}."]
    meaning = ("100% would mean the persona shift accounts for the whole change; 0%, that it happens some other way.")
    benign = attribution.benign_base
    if attribution.net and benign and window and window.benign_restored and window.persona_fraction is not None:
        sentences += [
            f"Taking the fine-tune's persona shift back out of layers {first}\u2013{last}, and nothing else, restores "
            f"{window.persona_fraction:.0%} of the lost refusal, and makes the fine-tune refuse "
            f"{window.benign_restored.rate:.0%} of {benign.n} benign requests that the base refuses "
            f"{benign.rate:.0%} of.",
            f"Counting only the refusal it restores beyond that rise on benign requests (refusing everything says "
            f"nothing about the persona), it undoes {fraction:.0%} of the change (95% interval {low:.0%} to "
            f"{high:.0%}, simultaneous over the three windows). {meaning}"]
    else:
        sentences.append(f"Taking the fine-tune's persona shift back out of layers {first}\u2013{last}, and nothing "
                         f"else, undoes {fraction:.0%} of that change (95% interval {low:.0%} to {high:.0%}). "
                         + meaning)
    if random is not None:
        sentences.append(f"The same-sized change along a random direction undoes {random:.0%}: a fraction well above "
                         "that is the persona's, not any disturbance of the layers.")
    if attribution.direction == "persona_without_refusal":
        sentences.append("The persona direction is used without its refusal component, so a fine-tune that edits "
                         "refusal directly is not counted as a persona shift.")
    return sentences


def render_html(results: AuditResults) -> str:
    return _environment().get_template("report.html.j2").render(
        r=results, replay=results.replay, attribution=results.attribution,
        layer_charts=layer_charts(results.layers),
        persona_heatmap=persona_heatmap(results.replay),
        gating_chart=gating_chart(results.attribution),
        attribution_explained=explain_attribution(results.attribution),
    )


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&@:])")  # @: no mention; ':' no bare-URL link


def md_escape(text: str) -> str:
    """Escape text for Markdown so nothing in it becomes a link, image, HTML, formatting or a GitHub mention."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def outcome(label: str, expected: str | None) -> str:
    """CSS class for a judged label: a refusal is good on a harmful item and bad on a benign one, so the
    colour follows what the item expects, not the label."""
    if label == "degenerate" or expected is None:
        return label
    return "good" if is_refusing(label) == (expected == "refuse") else "bad"


def render_summary(results: AuditResults) -> str:
    env = _environment()
    env.autoescape = False  # Markdown: every interpolated text goes through md_escape instead
    env.filters["md"] = md_escape
    return env.get_template("summary.md.j2").render(r=results, replay=results.replay,
                                                    attribution=results.attribution)


def index_row(results: AuditResults, report_path: Path) -> dict[str, Any]:
    """The key numbers of one audit, for the audit-many index (its folder, `report_path`'s, names it there)."""
    replay, attribution, drift = results.replay, results.attribution, results.general_drift
    assert replay and attribution and drift, "a whole audit's results"
    furthest = furthest_persona_shift(results.layers)
    assert furthest is not None, "a whole audit measures its layers"
    return {
        "name": results.finetune.name, "verdict": results.verdict, "report": report_path.as_posix(),
        "folder": report_path.parent.name,
        "refusal_base": replay.refusal.base.rate, "refusal": replay.refusal.finetune.rate,
        "refusal_ci": replay.refusal.finetune.ci, "degenerate": replay.refusal.finetune.degenerate_rate,
        "false_refusal_base": replay.false_refusal.base.rate, "false_refusal": replay.false_refusal.finetune.rate,
        "persona_fraction": attribution.persona_fraction, "persona_ci": attribution.ci, "window": attribution.window,
        "net": bool(attribution.net), "random_fraction": attribution.random_fraction,
        "attribution_items": attribution.base.n, "attribution_change": attribution.refusal_change,
        "max_persona_shift": furthest.persona_shift, "persona_shift_layer": furthest.layer,
        "persona_shift_floor": furthest.persona_floor(),
        "kl": drift.kl, "reasons": results.reasons,
    }


def error_row(name: str, error: str) -> dict[str, Any]:
    """A checkpoint that could not be audited, for the audit-many index."""
    return {"name": name, "verdict": "error", "error": error}


def render_index(rows: list[dict[str, Any]], *, ordered: bool = True) -> str:
    """The audit-many index: one row per checkpoint with a link to its report (or the error that stopped
    it), and, for `ordered` checkpoints (a training run's, in order), trend charts over the audited ones. The
    demo's organisms are not a sequence: a line from one to the next would draw a trend that is not there."""
    all_rows, rows = rows, [r for r in rows if r["verdict"] != "error"]
    trends = [] if not ordered else [
        charts.line_chart("Refusal of harmful requests across checkpoints",
                          [charts.Series("fine-tune", [r["refusal"] for r in rows]),
                           charts.Series("base", [r["refusal_base"] for r in rows], charts.COLOURS[3])],
                          band=[tuple(r["refusal_ci"]) for r in rows], band_label="95% CI of the fine-tune's rate",
                          x_label="checkpoint"),
        charts.line_chart("False refusal of benign requests", [charts.Series("fine-tune", [r["false_refusal"]
                                                                                          for r in rows])],
                          x_label="checkpoint"),
        charts.line_chart("Persona shift furthest past its floor", [charts.Series(
            "shift", [r["max_persona_shift"] for r in rows], charts.COLOURS[1])], reference=0.0, x_label="checkpoint"),
    ]
    return _environment().get_template("index.html.j2").render(rows=all_rows, trends=trends)


@dataclass(frozen=True)
class Rendered:
    html: str
    summary: str

    def files(self) -> dict[str, bytes]:
        """report.html and summary.md, for `outputs.write_outputs`."""
        return {"report.html": self.html.encode("utf-8"), "summary.md": self.summary.encode("utf-8")}


def render(results: AuditResults) -> Rendered:
    """Both documents, rendered in memory (so a rendering error leaves no file behind)."""
    return Rendered(render_html(results), render_summary(results))


def load_results(path: Path) -> AuditResults:
    """A results.json file, checked against the schema (bad input names the key) and typed."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AuditInputError(f"{path} cannot be read as results.json ({exc}).") from None
    return schema.read(data, str(path))
