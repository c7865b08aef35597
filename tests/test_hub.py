"""Hub ids resolved offline from a Hub cache layout built on disk from tiny models."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from auditor import models, sources
from auditor.cli import main
from auditor.errors import AuditInputError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def publish(cache: Path, repo: str, folder: Path, commit: str, ref: str | None = "main") -> Path:
    """Lay out `folder` as the snapshot `commit` of `repo` in a Hub cache (models--org--name/...)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    if ref:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub(offline_hub: Path, base_dir: Path, lora_random_dir: Path) -> Path:
    cache = offline_hub
    publish(cache, "org/base", base_dir, COMMIT)
    publish(cache, "org/base", base_dir, OTHER, ref="v2")
    adapter = publish(cache, "org/adapter", lora_random_dir, COMMIT)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "org/base"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return cache


def test_hub_id_and_revision_resolve_to_commits(hub: Path) -> None:
    main_source = sources.resolve_source("org/base", what="--base")
    assert main_source.commit == COMMIT and (main_source.path / "config.json").is_file()
    assert sources.resolve_source("org/base", "v2", what="--base").commit == OTHER
    assert sources.resolve_source("org/base", OTHER, what="--base").commit == OTHER


def test_missing_revision_explains_how_to_download(hub: Path) -> None:
    with pytest.raises(AuditInputError, match="hf download org/base --revision nope"):
        sources.resolve_source("org/base", "nope", what="--base")


def test_audit_by_hub_id_infers_base_and_records_hashes(hub: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["directions", "--finetune", "org/adapter", "--out", str(out),
                 "--recipe", "quick"]) == 0
    assert "using org/base (from the fine-tune's adapter_config.json" in capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert data["base"]["name"] == "org/base" and data["base"]["commit"] == COMMIT
    assert data["base"]["inferred_from"].startswith("adapter_config.json")
    assert data["finetune"]["commit"] == COMMIT and data["finetune"]["kind"] == "lora"
    assert len(data["base"]["files"]["model.safetensors"]) == 64
    assert "adapter_model.safetensors" in data["finetune"]["files"]


def test_full_finetune_base_from_model_card(tmp_path: Path, full_small_dir: Path) -> None:
    card = Path(shutil.copytree(full_small_dir, tmp_path / "ft")) / "README.md"
    card.write_text("---\nbase_model: org/base\nlicense: mit\n---\n# A fine-tune\n")
    source = sources.resolve_source(str(card.parent), what="--finetune")
    assert sources.infer_base(source) == ("org/base", "model card base_model")
    card.write_text("# no metadata\n")
    with pytest.raises(AuditInputError, match="Pass --base"):
        sources.infer_base(source)


def test_audit_many_loads_the_base_once_and_writes_an_index(base_dir: Path, lora_zero_dir: Path,
                                                            lora_random_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_replay_recipe

    loads = []
    real = models._load_checkpoint
    monkeypatch.setattr(models, "_load_checkpoint", lambda source, options: loads.append(source.name) or
                        real(source, options))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{lora_random_dir}\n")
    out = tmp_path / "many"
    code = main(["audit-many", "--base", str(base_dir), str(lora_zero_dir), "--list", str(listing),
                 "--recipe", str(write_replay_recipe(tmp_path)), "--out", str(out), "--no-cache"])
    assert code in (1, 4)  # 6 refusal items resolve no drop: inconclusive unless one was detected
    assert loads == [str(base_dir)]  # one load of the base for both adapters
    index = (out / "index.html").read_text()
    assert index.count('<a href="0') == 2 and "http://" not in index and "https://" not in index
    for folder in ("01-lora-zero", "02-lora-random"):
        assert (out / folder / "report.html").is_file()
    first = json.loads((out / "01-lora-zero" / "results.json").read_text())
    assert first["general_drift"]["kl"] == pytest.approx(0.0, abs=1e-9)  # B = 0: the adapter changes nothing
    # identical: a warning; on 6 refusal items it is also inconclusive, which ranks above a warning
    assert first["finetune"]["identical_to_base"] and first["verdict"] == "inconclusive"
    assert any("identical in function" in reason for reason in first["reasons"])


def test_audit_many_records_a_failed_checkpoint_and_goes_on(base_dir: Path, lora_random_dir: Path,
                                                            tmp_path: Path) -> None:
    """An adapter with no tensors passes the file checks but fails after loading: the batch goes on."""
    from conftest import write_replay_recipe
    from safetensors.torch import save_file

    empty = Path(shutil.copytree(lora_random_dir, tmp_path / "empty"))
    save_file({}, str(empty / "adapter_model.safetensors"))
    out = tmp_path / "many"
    code = main(["audit-many", "--base", str(base_dir), str(lora_random_dir), str(empty), str(lora_random_dir),
                 "--recipe", str(write_replay_recipe(tmp_path)), "--out", str(out), "--no-cache",
                 "--junit", str(tmp_path / "ci" / "junit.xml")])
    assert code == 2  # bad input in one checkpoint
    root = ET.parse(tmp_path / "ci" / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 3 and root.get("errors") == "1"
    assert root.get("tests") == str(sum(int(suite.get("tests", "0")) for suite in suites))
    (failed,) = [suite for suite in suites if suite.find("testcase/error") is not None]
    error = failed.find("testcase/error")
    assert "empty" in str(failed.get("name"))
    assert error is not None and "has no weights for" in str(error.get("message"))
    audited = [suite for suite in suites if suite is not failed]
    assert all(suite.find("properties") is not None and len(suite.findall("testcase")) > 1 for suite in audited)
    index = (out / "index.html").read_text()
    assert index.count("<tr><td class=\"n\">") == 3 and "not audited: AuditInputError" in index
    assert "has no weights for" in index
    assert (out / "01-lora-random" / "report.html").is_file() and (out / "03-lora-random" / "report.html").is_file()
    assert not (out / "02-empty" / "results.json").exists()


def test_audit_many_checks_every_checkpoint_before_loading(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Path(shutil.copytree(lora_random_dir, tmp_path / "broken"))
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": "four"}')
    monkeypatch.setattr(models, "_load_checkpoint", lambda *a: pytest.fail("a model loaded before the checks"))
    code = main(["audit-many", "--base", str(base_dir), str(lora_random_dir), str(tmp_path / "missing"),
                 str(broken), "--out", str(tmp_path / "many"), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 3 checkpoints cannot be audited" in err
    assert "missing: --finetune" in err and "r must be a positive integer" in err
