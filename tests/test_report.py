from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from auditor import report, schema
from auditor.cli import main
from auditor.results import AuditResults, Rate

SECTIONS = ("verdict", "layers", "replay", "personas", "attribution", "gating", "flipped", "provenance")
PAYLOAD = ("<script>alert(1)</script><img src=x onerror=alert(2)></textarea>"
           "[click me](https://evil.example/x) ![img](https://evil.example/i.png)")
ARTIFACTS = Path(os.environ.get("DRIFT_AUDIT_ARTIFACTS", Path(__file__).parents[1] / "reports" / "test-artifacts"))


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if dict(attrs).get("id"):
            self.ids.add(str(dict(attrs)["id"]))


def parse(html: str) -> Collector:
    collector = Collector()
    collector.feed(html)
    collector.close()
    return collector


def typed(data: dict[str, Any]) -> AuditResults:
    """Results as the report reads them: checked against the schema, then typed."""
    return schema.read(data, "results.json")


def with_payload(data: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    flipped = {"id": "x1", "category": PAYLOAD, "prompt": PAYLOAD,
               "base": {"label": "refusal", "response": PAYLOAD}, "finetune": {"label": "compliance",
                                                                             "response": PAYLOAD}}
    data["replay"]["refusal"]["flipped"].insert(0, flipped)
    data["replay"]["refusal"]["flipped_count"] += 1
    data["finetune"]["name"] = PAYLOAD
    data["reasons"].append(f"warn: {PAYLOAD}")
    return data


def test_audit_writes_valid_results_and_exit_code(audit_dir: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    assert schema.problems(data) == [] and schema.part(data) == "audit"
    assert (audit_dir / "report.html").is_file() and (audit_dir / "summary.md").is_file()
    assert data["verdict"] in ("inconclusive", "fail")  # 6 refusal items resolve no drop
    assert data["resolution"]["n"] == 6 and not data["resolution"]["resolved"]
    assert [w["window"] for w in data["attribution"]["layers"]] == ["early", "middle", "late"]


def test_html_has_every_section_and_no_external_reference(audit_dir: Path) -> None:
    html = (audit_dir / "report.html").read_text()
    parsed = parse(html)
    assert set(SECTIONS) <= parsed.ids
    assert "http://" not in html and "https://" not in html
    assert not any(tag == "script" for tag, _ in parsed.tags)
    for tag, attrs in parsed.tags:
        for attr in ("src", "href"):
            value = attrs.get(attr)
            assert value is None or value.startswith("#"), (tag, attrs)
    assert html.count("<svg") >= 5  # four layer charts, heatmap, gating curve
    assert "<details" in html and "<details open" not in html  # responses collapsed


def test_model_output_is_escaped_in_html(audit_dir: Path) -> None:
    data = with_payload(json.loads((audit_dir / "results.json").read_text()))
    html = report.render_html(typed(data))
    assert "<script>" not in html and "<img src=x" not in html and "</textarea>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not any(tag in ("script", "img", "textarea") for tag, _ in parse(html).tags)


def test_flipped_labels_are_coloured_by_what_the_item_expects(audit_dir: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    flip = {"category": "c", "prompt": "p", "base": {"label": "refusal", "response": "r"},
            "finetune": {"label": "compliance", "response": "r"}}
    for key, expected in (("refusal", "refuse"), ("false_refusal", "answer")):
        data["replay"][key]["flipped"] = [{**flip, "id": f"{key}-1", "expected": expected}]
    html = report.render_html(typed(data))
    harmful, benign = html.split("refusal-1")[1], html.split("false_refusal-1")[1]
    assert re.search(r'class="label bad">refusal.*class="label good">compliance', benign.split("</summary>")[0])
    assert re.search(r'class="label good">refusal.*class="label bad">compliance', harmful.split("</summary>")[0])
    assert [report.outcome("degenerate", "answer"), report.outcome("refusal", None)] == ["degenerate", "refusal"]


def test_report_states_the_judge_and_corrected_rates(audit_dir: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    html, summary = report.render_html(typed(data)), report.render_summary(typed(data))
    judged = data["replay"]["judge"]
    assert f"sensitivity {judged['sensitivity']['value']:.1%}" in html
    assert "corrected for the judge" in html and "full / partial" in html
    assert "Refusal, corrected for the judge" in summary and "Judge phrase" in summary
    data["replay"]["judges"]["base"].update(disagreements_count=1, disagreements=[
        {"id": "1", "prompt": PAYLOAD, "response": PAYLOAD, "judge": "refusal", "second": "compliance"}])
    html = report.render_html(typed(data))
    assert "two judges disagree" in html and "<script>" not in html
    assert report.outcome("partial", "refuse") == "good" and report.outcome("partial", "answer") == "bad"


def test_results_without_judge_figures_still_render(audit_dir: Path) -> None:
    """A results.json written before the judge was measured re-renders (no judge line, no corrected rows); it
    predates the smallest detectable drop too, so it has no resolution nor discordant pairs."""
    data = json.loads((audit_dir / "results.json").read_text())
    del data["replay"]["judge"], data["resolution"]
    data["reasons"] = [r for r in data["reasons"] if not r.startswith("inconclusive") and "corrected for" not in r]
    for key in ("refusal", "false_refusal"):
        del data["replay"][key]["discordant"], data["replay"][key]["difference"]["corrected"]
    for key in ("refusal", "false_refusal"):
        for side in ("base", "finetune"):
            for field in ("corrected", "full_rate", "partial_rate"):
                del data["replay"][key][side][field]
    assert "corrected for the judge" not in report.render_html(typed(data))
    assert "corrected for the judge" not in report.render_summary(typed(data))
    assert "Smallest detectable" not in report.render_html(typed(data)) + report.render_summary(typed(data))


def test_responses_the_judge_cannot_read_are_counted_in_the_report(audit_dir: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    assert "not in a language the judge reads" not in report.render_html(typed(data))  # none unread: no row
    data["replay"]["refusal"]["finetune"]["unreadable"] = 3
    assert "not in a language the judge reads" in report.render_html(typed(data))
    assert f"3 of {data['replay']['refusal']['finetune']['n']}" in report.render_html(typed(data))


def test_model_output_is_inert_in_markdown(audit_dir: Path) -> None:
    data = with_payload(json.loads((audit_dir / "results.json").read_text()))
    summary = report.render_summary(typed(data))
    assert not re.search(r"(?<!\\)<", summary), "an unescaped < could open HTML"
    assert not re.search(r"(?<!\\)\]\(", summary) and not re.search(r"(?<!\\)!\[", summary)
    assert report.md_escape("[a](http://x) <b> @me") == r"\[a\]\(http\://x\) \<b\> \@me"


def test_report_command_rerenders_without_models(audit_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "results.json"
    shutil.copy(audit_dir / "results.json", copy)
    assert main(["report", str(copy)]) == 0
    assert (tmp_path / "report.html").read_text() == (audit_dir / "report.html").read_text()


def test_report_command_rejects_other_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "x.json"
    other.write_text('{"schema": "something-else"}')
    assert main(["report", str(other)]) == 2
    assert "not a drift-audit results file" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (scripts/setup.sh --browser installs it; CI has it)")
def test_report_in_a_real_browser(audit_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(report.render_html(typed(with_payload(json.loads((audit_dir / "results.json").read_text())))))
    console, dialogs, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        scripts = page.evaluate("document.scripts.length")
        text = page.inner_text("body")
        page.locator("#flipped details").first.click()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert dialogs == [] and scripts == 0
    assert [c for c in console if c[0] == "error"] == []
    assert all(url.startswith("file://") for url in requests), requests
    assert "<script>alert(1)</script>" in text  # shown as text
    assert re.search(r"Verdict\s+(INCONCLUSIVE|FAIL)", text, re.IGNORECASE)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_audit_appends_summary_for_github(base_dir: Path, same_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_replay_recipe

    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    code = main(["audit", "--base", str(base_dir), "--finetune", str(same_dir), "--recipe",
                 str(write_replay_recipe(tmp_path)), "--out", str(tmp_path / "o"), "--no-cache"])
    assert code == 4  # inconclusive: 6 refusal items cannot resolve a 10-point drop
    text = step_summary.read_text()
    # the same weights under another name: not a silent pass, a warning that nothing was audited
    assert text.startswith("earlier step\n") and "## drift-audit: **INCONCLUSIVE**" in text
    assert "identical in function to the base" in text


PARTS = {"replay": ("verdict", "reasons", "attribution"),
         "directions": ("verdict", "reasons", "attribution", "replay", "general_drift")}


@pytest.mark.parametrize("part", PARTS)
def test_report_renders_what_a_partial_file_holds(audit_dir: Path, tmp_path: Path, part: str) -> None:
    """`directions` and `replay` write results without a verdict; `report` shows what they hold."""
    data = json.loads((audit_dir / "results.json").read_text())
    for key in PARTS[part]:
        del data[key]
    assert schema.problems(data) == [] and schema.part(data) == part
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path / "results.json")]) == 0
    html, summary = (tmp_path / "report.html").read_text(), (tmp_path / "summary.md").read_text()
    assert set(SECTIONS) <= parse(html).ids and "Not part of this run" in html
    assert f"drift-audit {part}: no verdict" in summary
    assert ("Refusal of harmful requests" in summary) == (part == "replay")


def _drop_rate(d: dict[str, Any]) -> None:
    del d["replay"]["refusal"]["base"]["rate"]


def _text_cosine(d: dict[str, Any]) -> None:
    d["layers"][0]["refusal_cos"] = "high"


def _nan_shift(d: dict[str, Any]) -> None:
    d["layers"][0]["persona_shift"] = float("nan")


def _verdict_without_attribution(d: dict[str, Any]) -> None:
    del d["attribution"]


def _markup_verdict(d: dict[str, Any]) -> None:
    d["verdict"] = "<b>pass</b>"


def _reversed_interval(d: dict[str, Any]) -> None:
    d["replay"]["false_refusal"]["finetune"]["ci"] = [0.9, 0.1]


@pytest.mark.parametrize("edit, needle", [
    (_drop_rate, "replay.refusal.base.rate is missing"),
    (_text_cosine, "layers[0].refusal_cos should be number"),
    (_nan_shift, "layers[0].persona_shift should be number, got NaN"),
    (_verdict_without_attribution, "attribution is missing"),
    (_markup_verdict, "verdict should be one of"),
    (_reversed_interval, "replay.false_refusal.finetune.ci should be [low, high]"),
])
def test_report_names_the_key_a_hand_edit_broke(audit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                edit: Any, needle: str) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    edit(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path / "results.json")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_report_refuses_a_json_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results.json").write_text("[1, 2]")
    assert main(["report", str(tmp_path / "results.json")]) == 2
    assert "not a drift-audit results file" in capsys.readouterr().err


def test_every_field_of_the_summary_is_escaped(audit_dir: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    data["finetune"]["name"] = "org/model by @octocat"
    data["environment"]["packages"]["drift-auditor"] = "<b>1.0</b> https://evil.example"
    summary = report.render_summary(typed(data))
    assert r"\@octocat" in summary and "<b>" not in summary and "https://" not in summary


def test_attribution_is_explained_in_plain_words(audit_dir: Path) -> None:
    from dataclasses import replace

    from auditor.report import explain_attribution

    measured = typed(json.loads((audit_dir / "results.json").read_text())).attribution
    assert measured is not None
    attribution = replace(measured, persona_fraction=0.8, ci=(0.6, 0.95), layer_range=(20, 29), random_fraction=0.02,
                          direction="persona_without_refusal", base=Rate.of(9 * 48 // 10, 48),
                          finetune=Rate.of(1, 10))
    text = " ".join(explain_attribution(attribution))
    assert "base refuses 90% and the fine-tune 10%" in text
    assert "layers 20\u201329" in text and "undoes 80% of that change (95% interval 60% to 95%)" in text
    assert "random direction undoes 2%" in text and "without its refusal component" in text
    assert explain_attribution(replace(attribution, persona_fraction=None)) == []


def test_schema_accepts_every_label_the_judge_gives(audit_dir: Path) -> None:
    """A partial refusal anywhere in the flipped items must not make the run's own results invalid."""
    from auditor.judge import LABELS

    data = json.loads((audit_dir / "results.json").read_text())
    flipped = {"id": "x", "category": "c", "prompt": "p", "expected": "refuse",
               "base": {"label": "refusal", "response": "r"}, "finetune": {"label": "compliance", "response": "r"}}
    for label in LABELS:
        data["replay"]["refusal"]["flipped"] = [{**flipped, "finetune": {"label": label, "response": "r"}}]
        assert schema.problems(data) == [], label


def test_summary_leads_with_the_verdict_and_what_the_audit_could_resolve(audit_dir: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    lead = report.render_summary(typed(data)).split("\n\n")[:2]
    assert lead[0] == f"## drift-audit: **{data['verdict'].upper()}**"
    bullets = lead[1].splitlines()
    assert [b.split("**")[1] for b in bullets] == ["Refusal of harmful requests", "Attributable to the persona shift",
                                                    "Smallest detectable drop", "Full report"]
    assert "95% CI" in bullets[0] and "**not resolved**" in bullets[2] and "`report.html`" in bullets[3]
    assert "](" not in lead[1] and "http" not in lead[1]  # a pointer, not a link
    data["resolution"].update(smallest_detectable_drop=0.0612, resolved=True, items_needed=40)
    resolved = report.render_summary(typed(data))
    assert "6.1 percentage points" in resolved and "10 points: resolved." in resolved


def test_html_shows_the_inconclusive_verdict_and_the_detectable_drop(audit_dir: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    data["verdict"] = "inconclusive"
    html = report.render_html(typed(data))
    assert '<span class="verdict inconclusive">inconclusive</span>' in html and ".verdict.inconclusive {" in html
    assert "Smallest detectable refusal drop" in html and "not resolved" in html


def test_an_uncomputed_attribution_names_no_window(audit_dir: Path) -> None:
    """With no fraction computed no window was chosen: the report and the summary must not name one, as if a
    fraction had been measured there and found meaningless."""
    data = json.loads((audit_dir / "results.json").read_text())
    data["attribution"].update(persona_fraction=None, ci=None, window="late",
                               note="refusal dropped by 3.1 points on the 96 refusal items attribution replays")
    html, summary = report.render_html(typed(data)), report.render_summary(typed(data))
    assert "Persona attribution<b>not computed</b>" in html and "Persona attribution (late layers)" not in html
    assert "**Attributable to the persona shift**: not computed: refusal dropped by 3" in summary
