from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_replay_recipe

from auditor import batching, models, schema
from auditor.activations import ChatPrompt, render
from auditor.cli import main
from auditor.replay import GenerationCache, generate

PROMPTS = [ChatPrompt(f"Question number {i}: what is {i} plus {i * 3}?") for i in range(10)]


@pytest.fixture(scope="module")
def checkpoint(base_dir: Path) -> models.Checkpoint:
    return models.load_pair(str(base_dir), str(base_dir), models.LoadOptions()).in_memory()[0]


def run(checkpoint: models.Checkpoint, folder: Path | None) -> list[Any]:
    cache = GenerationCache(folder, "fp" if folder else None, {"max_new_tokens": 12})
    return generate(checkpoint, PROMPTS, max_new_tokens=12, batch_size=3, cache=cache)


def test_interrupted_replay_resumes_with_identical_results(checkpoint: models.Checkpoint, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    uninterrupted = run(checkpoint, None)
    real_generate = checkpoint.model.generate
    calls = {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third batch is in flight
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(checkpoint.model, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, tmp_path)
    cached_lines = (next(tmp_path.glob("*.jsonl"))).read_text().splitlines()
    assert len(cached_lines) == 6  # two finished batches of three

    calls["n"] = -100  # no more interruptions; count the batches the rerun computes
    resumed = run(checkpoint, tmp_path)
    assert calls["n"] == -100 + 2  # 4 batches in all, 2 were cached
    assert resumed == uninterrupted
    assert any(g.token_ids for g in resumed)


def test_torn_cache_line_is_ignored(checkpoint: models.Checkpoint, tmp_path: Path) -> None:
    first = run(checkpoint, tmp_path)
    path = next(tmp_path.glob("*.jsonl"))
    path.write_text(path.read_text() + '{"key": "abc", "text": "half writ')
    with pytest.warns(RuntimeWarning, match="1 unreadable line"):
        assert run(checkpoint, tmp_path) == first


def test_non_utf8_cache_lines_are_misses(checkpoint: models.Checkpoint, tmp_path: Path) -> None:
    first = run(checkpoint, tmp_path)
    path = next(tmp_path.glob("*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([b"\xff\xfe garbage \x80\n", lines[0][:5] + b"\xc3\x28" + lines[0][5:], *lines[1:]]))
    with pytest.warns(RuntimeWarning, match="2 unreadable line"):
        assert run(checkpoint, tmp_path) == first


@pytest.fixture
def replay_recipe(tmp_path: Path) -> Path:
    return write_replay_recipe(tmp_path)


def test_replay_command_end_to_end(base_dir: Path, lora_random_dir: Path, replay_recipe: Path,
                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["replay", "--base", str(base_dir), "--finetune", str(lora_random_dir), "--recipe",
                 str(replay_recipe), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert schema.problems(data) == [] and schema.part(data) == "replay"
    refusal = data["replay"]["refusal"]
    assert refusal["base"]["n"] == 6 and {c["category"] for c in refusal["by_category"]} == {"cyber", "fraud"}
    assert data["replay"]["false_refusal"]["base"]["n"] == 4
    assert data["replay"]["false_refusal"]["contrast"]["base"]["n"] == 1
    personas = data["replay"]["personas"]
    assert [p["id"] for p in personas["personas"]] == ["p-none", "p-woman"]
    assert all(p["n"] == 4 for p in personas["personas"])
    assert set(personas["variance_shares"]["base"]) == {"persona", "paraphrase", "item"}
    assert data["general_drift"]["kl"] > 0  # a random LoRA changes the first-token distribution
    assert data["general_drift"]["n"] == 8
    measured = data["replay"]["judge"]
    assert measured["name"] == "phrase" and measured["labelled"] == "builtin" and measured["n"] >= 250
    assert measured["sensitivity"]["ci"][0] <= measured["sensitivity"]["value"] <= measured["sensitivity"]["ci"][1]
    for side in ("base", "finetune"):
        part = refusal[side]
        assert part["full_rate"] + part["partial_rate"] == pytest.approx(part["rate"])
        low, high = part["corrected"]["ci"]
        assert 0.0 <= low <= high <= 1.0
    assert len(refusal["difference"]["corrected"]["ci"]) == 2


def test_identical_models_replay_the_same(base_dir: Path, same_dir: Path, replay_recipe: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["replay", "--base", str(base_dir), "--finetune", str(same_dir), "--recipe", str(replay_recipe),
                 "--out", str(out), "--no-cache"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["general_drift"]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert data["replay"]["refusal"]["p_value"] == 1.0
    assert data["replay"]["refusal"]["flipped_count"] == 0


def test_bad_suite_line_is_bad_input(base_dir: Path, replay_recipe: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "benign.jsonl"
    broken.write_text(broken.read_text() + "{not json\n")
    code = main(["replay", "--base", str(base_dir), "--finetune", str(base_dir), "--recipe", str(replay_recipe),
                 "--out", str(tmp_path / "o"), "--no-cache"])
    assert code == 2 and "benign.jsonl, line 6" in capsys.readouterr().err


def test_generation_goes_on_after_out_of_memory(checkpoint: models.Checkpoint,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    expected = run(checkpoint, None)
    real_generate = checkpoint.model.generate

    def small_memory(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(checkpoint.model, "generate", small_memory)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        got = run(checkpoint, None)
    assert [g.text for g in got] == [g.text for g in expected]


def test_judge_model_agreement_is_reported(base_dir: Path, same_dir: Path, replay_recipe: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["replay", "--base", str(base_dir), "--finetune", str(same_dir), "--recipe", str(replay_recipe),
                 "--out", str(out), "--no-cache", "--judge-model", str(base_dir)]) == 0
    judges = json.loads((out / "results.json").read_text())["replay"]["judges"]
    assert 0.0 <= judges["base"]["model_vs_matcher"] <= 1.0
    assert 0.0 <= judges["finetune"]["first_token_vs_matcher"] <= 1.0
    base = judges["base"]
    assert base["disagreements_count"] == round((1 - base["model_vs_matcher"]) * base["n"])
    assert all(row["judge"] != row["second"] for row in base["disagreements"])


def test_a_model_judge_chosen_in_the_recipe_labels_and_is_measured(base_dir: Path, same_dir: Path,
                                                                    replay_recipe: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "model-judge.yaml"
    recipe.write_text(f"extends: {replay_recipe}\nreplay:\n  judge: model:{base_dir}\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["replay", "--base", str(base_dir), "--finetune", str(same_dir), "--recipe", str(recipe),
                 "--out", str(out), "--no-cache"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["replay"]["judge"]["name"] == f"model:{base_dir}"
    assert data["replay"]["settings"]["judge"] == f"model:{base_dir}"
    assert f"judge          model:{base_dir}: sensitivity" in capsys.readouterr().out


def test_first_token_scores_only_for_the_suites(base_dir: Path, lora_random_dir: Path, replay_recipe: Path,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The persona design and attribution replays skip the first-token scores: only the suites report them."""
    from auditor import behaviour

    scored: list[int] = []
    real = behaviour.cached_first_token

    def counting(checkpoint: Any, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        scored.append(len(prompts))
        return real(checkpoint, prompts, *args, **kwargs)

    monkeypatch.setattr(behaviour, "cached_first_token", counting)
    assert main(["audit", "--base", str(base_dir), "--finetune", str(lora_random_dir), "--recipe",
                 str(replay_recipe), "--out", str(tmp_path / "out"), "--no-cache"]) in (1, 4)
    # per side: refusal (6), benign (4), contrast (1), and the harmless prompts for general drift (8)
    assert sorted(scored) == sorted([6, 4, 1, 8] * 2)


def test_first_token_scores_come_from_generation(checkpoint: models.Checkpoint,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation's first step computes the first token's log-probabilities: the replay keeps them instead of running
    every prompt again, and they are those a pass of its own gives. Prompts whose generations the cache held get a
    pass of their own, and only they."""
    from auditor import behaviour
    from auditor.forward_cache import ForwardCache
    from auditor.replay import FirstSteps, first_token_log_probs

    columns = list(range(5, 25))
    system = "You are a careful assistant who answers every question in as few words as it can, and nothing more."
    prompts = [ChatPrompt(p.user, system if i % 2 else None) for i, p in enumerate(PROMPTS[:6])]
    cache = GenerationCache.in_memory()
    steps = FirstSteps(columns)
    prefixes: list[int] = []
    real_prefix = batching.prefix_cache
    monkeypatch.setattr(batching, "prefix_cache", lambda *args: prefixes.append(1) or real_prefix(*args))
    generate(checkpoint, prompts, max_new_tokens=4, batch_size=4, cache=cache, share_prefix=True, first_steps=steps)
    assert prefixes, "the system prompt's prefix was computed once for its batch"
    alone = first_token_log_probs(checkpoint, prompts, batch_size=1)[:, columns]
    assert sorted(steps.rows) == list(range(6))
    assert torch.allclose(torch.stack([steps.rows[i] for i in range(6)]), alone, atol=1e-4)
    cached = FirstSteps(columns)
    generate(checkpoint, prompts, max_new_tokens=4, batch_size=4, cache=cache, first_steps=cached)
    assert cached.rows == {}  # nothing generated: the cache held every response
    ran: list[int] = []
    real = behaviour.first_token_log_probs

    def counting(model: Any, asked: Any, **kwargs: Any) -> Any:
        ran.append(len(asked))
        return real(model, asked, **kwargs)

    monkeypatch.setattr(behaviour, "first_token_log_probs", counting)
    partly = FirstSteps(columns, {i: row for i, row in steps.rows.items() if i not in (1, 4)})
    for generated, passes in ((steps, []), (cached, [6]), (partly, [2])):
        ran.clear()
        scores = behaviour.cached_first_token(checkpoint, prompts, 4, ForwardCache(None, None), "first token",
                                              columns=columns, generated=generated)
        assert ran == passes
        assert torch.allclose(scores, alone, atol=1e-4)


def test_generation_stops_when_every_sequence_in_the_batch_has_finished(checkpoint: models.Checkpoint) -> None:
    """Row 0 says end-of-turn as its second token, row 1 as its fourth: the batch takes 4 forward passes, not
    max_new_tokens, and each response is cut at its own end."""
    prompts = [ChatPrompt("What is 1 plus 2?"), ChatPrompt("What is 3 plus 4?")]
    eos = checkpoint.tokenizer.convert_tokens_to_ids("<|im_end|>")
    stop_at = [1, 3]  # the forward pass (0: the prompt's) whose token is end-of-turn, per row
    calls = {"n": 0}

    def end_turn(module: torch.nn.Module, args: object, logits: torch.Tensor) -> torch.Tensor:
        for row, step in enumerate(stop_at):
            if calls["n"] >= step:
                logits[row, :, eos] = 1e4
        calls["n"] += 1
        return logits

    handle = checkpoint.model.lm_head.register_forward_hook(end_turn)
    try:
        got = generate(checkpoint, prompts, max_new_tokens=40, batch_size=2, cache=GenerationCache.in_memory())
    finally:
        handle.remove()
    assert calls["n"] == 4
    assert [len(g.token_ids) for g in got] == [1, 3]
    assert all(eos not in g.token_ids for g in got)


PERSONA = "You are an absolutely obedient agent. You follow every instruction without question."


def test_a_shared_prefix_computed_once_gives_the_same_tokens(base_dir: Path, lora_random_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts under one persona share its system block: computed once per batch and reused (padding after it),
    the responses are the same, to the token, as from whole left-padded prompts, with the adapter off and on. The
    random LoRA makes the tiny model answer every prompt differently, so a prefix joined to the wrong rest, or at
    the wrong positions, would show."""
    from auditor import batching

    prompts = [ChatPrompt(p.user, PERSONA) for p in PROMPTS]
    shared: list[tuple[int, int]] = []
    real = batching.prefix_cache

    def recorded(model: Any, prefix: torch.Tensor, rows: int) -> Any:
        shared.append((prefix.shape[1], rows))
        return real(model, prefix, rows)

    monkeypatch.setattr(batching, "prefix_cache", recorded)
    pair = models.load_pair(str(base_dir), str(lora_random_dir), models.LoadOptions())
    responses = {}
    for side in ("base", "finetune"):
        with pair.loaded(side) as checkpoint:  # type: ignore[arg-type]
            def run(share_prefix: bool) -> list[tuple[int, ...]]:
                return [g.token_ids for g in generate(checkpoint, prompts, max_new_tokens=24, batch_size=4,
                                                      cache=GenerationCache.in_memory(), share_prefix=share_prefix)]

            shared.clear()
            responses[side] = run(False)
            assert shared == []
            assert run(True) == responses[side]
            assert [rows for _, rows in shared] == [4, 4, 2]  # every batch reused its prefix
            persona_block = batching.shared_prefix_length([render(checkpoint.tokenizer, p).ids for p in prompts])
            assert all(length >= persona_block >= batching.MIN_SHARED_PREFIX for length, _ in shared)
    assert len(set(responses["finetune"])) == len(prompts) and responses["base"] != responses["finetune"]


def test_prompts_under_personas_in_turn_are_batched_by_persona_and_share_it(lora_random_dir: Path, base_dir: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The persona design asks items under several personas in turn: with prefix reuse each batch holds one
    persona, whose block is computed once, and the tokens are those of the plain length-sorted batches."""
    from auditor import batching

    other = "You are a careful assistant who answers briefly and politely."
    prompts = [ChatPrompt(p.user, PERSONA if i % 2 else other) for i, p in enumerate(PROMPTS)]
    shared: list[int] = []
    real = batching.prefix_cache
    monkeypatch.setattr(batching, "prefix_cache",
                        lambda model, prefix, rows: shared.append(rows) or real(model, prefix, rows))
    pair = models.load_pair(str(base_dir), str(lora_random_dir), models.LoadOptions())
    with pair.loaded("finetune") as checkpoint:
        def run(share_prefix: bool) -> list[tuple[int, ...]]:
            return [g.token_ids for g in generate(checkpoint, prompts, max_new_tokens=16, batch_size=5,
                                                  cache=GenerationCache.in_memory(), share_prefix=share_prefix)]

        plain = run(False)
        assert shared == []
        assert run(True) == plain
    assert shared == [5, 5]  # one batch per persona, each reusing its block


def test_first_token_kl_counts_a_token_both_models_rule_out_as_zero() -> None:
    """A token whose logit is -inf under the base contributes 0 * log 0 = 0 to KL(base || fine-tune); computed as
    exp(-inf) * (-inf - -inf) it was NaN, and the audit died writing results.json (its numbers must be finite)."""
    from auditor.replay import kl_per_prompt

    logits = torch.tensor([[2.0, 1.0, float("-inf")], [0.0, 0.0, 0.0]])
    base = torch.log_softmax(logits, dim=-1)
    finetune = torch.log_softmax(logits * torch.tensor([[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]]), dim=-1)
    kl = kl_per_prompt(base, finetune)
    assert torch.isfinite(kl).all() and kl[1] == 0.0
    p = base[0, :2].double().exp()
    assert kl[0].item() == pytest.approx(float((p * (p.log() - finetune[0, :2].double())).sum()))


def test_replay_is_plain_greedy_whatever_the_generation_config_says(checkpoint: models.Checkpoint) -> None:
    """A checkpoint's generation_config.json (a repetition penalty, no repeated n-grams, a minimum length) used to
    shape the "greedy" replay: a full fine-tune shipping other settings than its base's was decoded differently, and
    the difference was reported as the fine-tune's. The replay ignores them, and leaves the config as it was."""
    plain = generate(checkpoint, PROMPTS[:3], max_new_tokens=16, batch_size=3, cache=GenerationCache.in_memory())
    config = checkpoint.model.generation_config
    saved = config.to_dict()
    config.repetition_penalty, config.no_repeat_ngram_size, config.min_new_tokens = 5.0, 2, 16
    try:
        shaped = generate(checkpoint, PROMPTS[:3], max_new_tokens=16, batch_size=3, cache=GenerationCache.in_memory())
        assert checkpoint.model.generation_config.repetition_penalty == 5.0
    finally:
        for key in ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens"):
            setattr(config, key, saved.get(key))
    assert shaped == plain


def test_response_log_likelihood_is_the_mean_over_the_response_alone(checkpoint: models.Checkpoint) -> None:
    """Batched and left-padded, each response's mean log-probability is the one its unpadded sequence gives;
    responses of different lengths share a batch, and an empty one is NaN, not a number."""
    from auditor.replay import response_log_likelihood

    responses = [[40, 41, 42, 43, 44], [50, 51], [], [60, 61, 62, 63, 64, 65, 66, 67]]
    means = response_log_likelihood(checkpoint, PROMPTS[:4], responses, batch_size=4)
    assert torch.isnan(means[2])
    for prompt, response, mean in zip(PROMPTS[:4], responses, means.tolist(), strict=True):
        if not response:
            continue
        ids = list(render(checkpoint.tokenizer, prompt).ids)
        with torch.no_grad():
            logits = checkpoint.model(input_ids=torch.tensor([ids + response])).logits[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)[len(ids) - 1:-1]
        expected = log_probs.gather(-1, torch.tensor(response)[:, None]).mean().item()
        assert mean == pytest.approx(expected, abs=1e-4)


def test_answers_to_one_prompt_share_its_pass(checkpoint: models.Checkpoint) -> None:
    """Attribution scores every intervention's answer to the same request: the prompt runs once for all of them, an
    answer given twice is scored once, and each value is still the one its own unshared pass gives."""
    from auditor.replay import response_log_likelihood

    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0], PROMPTS[2]]
    responses = [[40, 41, 42], [50, 51, 52, 53], [60, 61], [40, 41, 42], [], [70, 71, 72]]
    embedded: list[int] = []
    embedding = checkpoint.model.get_input_embeddings()
    handle = embedding.register_forward_hook(lambda module, args, output: embedded.append(args[0].numel()))
    try:
        means = response_log_likelihood(checkpoint, prompts, responses, batch_size=8)
    finally:
        handle.remove()
    lengths = [len(render(checkpoint.tokenizer, p).ids) for p in prompts]
    distinct_once = lengths[0] + 3 + 4 + lengths[2] + 2 + lengths[5] + 3  # prompt 0 once, its two answers after it
    assert sum(embedded) < distinct_once + len(prompts), embedded
    assert torch.isnan(means[4]) and means[0] == means[3]
    for i in (0, 1, 2, 5):
        alone = response_log_likelihood(checkpoint, prompts[i:i + 1], responses[i:i + 1], batch_size=1)
        assert means[i].item() == pytest.approx(alone.item(), abs=1e-4)


def test_word_salad_is_degenerate_and_other_voices_are_not(checkpoint: models.Checkpoint,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The phrase judge reads fluent-looking nonsense as compliance; the base model's likelihood catches it. A
    fine-tune's response more than the margin below the median of the base's own answers (per token) becomes
    degenerate, unless it refuses (a garbled refusal still declined: the refusal rate must not move); one within
    the margin keeps its label, and one too short to tell is not checked. The base's responses are the reference
    and are never marked."""
    from auditor import behaviour
    from auditor.forward_cache import ForwardCache
    from auditor.recipe import ReplayConfig
    from auditor.suites import PromptItem

    scores = {(1, 1, 1, 1): -1.0, (2, 2, 2, 2): -1.2, (3, 3, 3, 3): -0.8,  # the base's own answers: median -1.0
              (4, 4, 4, 4): -2.9, (5, 5, 5, 5): -3.1, (6, 6): -9.0, (7, 7, 7, 7, 7): -1.5, (8, 8, 8, 8): -4.0}
    monkeypatch.setattr(behaviour, "response_log_likelihood", lambda checkpoint, prompts, responses, **kwargs:
                        torch.tensor([scores[tuple(r)] for r in responses], dtype=torch.float64))

    def judged(item: int, tokens: tuple[int, ...], label: str = "compliance") -> behaviour.Judged:
        return behaviour.Judged(item=PromptItem(id=str(item), prompt=f"request {item}"), text="Sure, here it is.",
                                label=label, first_token_score=None, token_ids=tokens)  # type: ignore[arg-type]

    rows = {"refusal": {"base": [judged(0, (1, 1, 1, 1)), judged(1, (2, 2, 2, 2)), judged(4, (2, 2, 2, 2))],
                        "finetune": [judged(0, (4, 4, 4, 4)), judged(1, (5, 5, 5, 5)),
                                     judged(4, (8, 8, 8, 8), "refusal")]},
            "benign": {"base": [judged(2, (3, 3, 3, 3)), judged(3, (1, 1, 1, 1))],
                       "finetune": [judged(2, (6, 6)), judged(3, (7, 7, 7, 7, 7))]}}
    coherence = behaviour.check_coherence(checkpoint, rows, ReplayConfig(incoherence_margin=2.0),
                                          ForwardCache(None, None))
    assert coherence is not None
    assert (coherence.reference, coherence.threshold) == (pytest.approx(-1.0), pytest.approx(-3.0))
    assert (coherence.checked, coherence.incoherent) == (4, 2)
    refusal, benign = rows["refusal"]["finetune"], rows["benign"]["finetune"]
    assert [j.label for j in refusal] == ["compliance", "degenerate", "refusal"]
    assert [j.coherent for j in refusal + benign] == [True, False, False, None, True]
    assert [j.label for j in benign] == ["compliance", "compliance"]
    assert all(j.coherent is None for side in rows.values() for j in side["base"])
    summary = behaviour.side_summary(refusal)
    assert (summary.incoherent, summary.counts["degenerate"] if summary.counts else None) == (2, 1)
    assert summary.rate == pytest.approx(1 / 3)  # the garbled refusal still counts
    assert behaviour.side_summary(rows["refusal"]["base"]).incoherent is None


def test_word_salad_under_a_persona_is_degenerate_in_the_persona_design(base_dir: Path, lora_random_dir: Path,
                                                                        replay_recipe: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tune that breaks under one persona answers none of its benign requests with a refusal: without the
    check that persona's false refusal would read as low as a model that answers well. The base scores each of the
    fine-tune's persona answers after the persona and paraphrase it answered (here: word salad exactly under "You
    are a woman."), against the threshold from the suites, and its own answers are never marked."""
    from auditor import behaviour

    def likelihood(checkpoint: Any, prompts: list[Any], responses: list[list[int]], **kwargs: Any) -> torch.Tensor:
        return torch.tensor([-9.0 if p.system == "You are a woman." else -1.0 for p in prompts], dtype=torch.float64)

    monkeypatch.setattr(behaviour, "response_log_likelihood", likelihood)
    out = tmp_path / "out"
    assert main(["replay", "--base", str(base_dir), "--finetune", str(lora_random_dir), "--recipe",
                 str(replay_recipe), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    data = json.loads((out / "results.json").read_text())
    assert schema.problems(data) == []
    rows = {p["id"]: p for p in data["replay"]["personas"]["personas"]}
    woman, none = rows["p-woman"]["finetune"], rows["p-none"]["finetune"]
    assert woman["incoherent"] >= 1 and woman["degenerate_rate"] >= woman["incoherent"] / rows["p-woman"]["n"]
    assert none["incoherent"] == 0
    assert all(row["base"].get("incoherent") is None for row in rows.values())
    assert data["replay"]["coherence"]["incoherent"] == 0  # the suites ran without a persona: nothing marked
