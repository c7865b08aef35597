"""Attribution methods side by side on the model organisms, whose answers are known.

    .venv/bin/python scripts/compare_attribution.py [--recipe demo]     # builds the organisms if needed

For each control (`persona-distilled`: the loss runs through the persona; `abliterated`: refusal was
edited out directly; `benign`: nothing was lost) and each way of measuring the persona shift that
attribution removes (the raw difference-of-means persona direction, or that direction without its
refusal component), prints the attributable fraction with its 95% interval in each layer window, next
to the random-direction control. Directions are measured once per organism; generations are cached.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from auditor import attribution, directions, judge, models, organisms
from auditor.inputs import load_suites, prompt_sets
from auditor.recipe import AttributionDirection, load_recipe
from auditor.replay import default_cache_dir

CONTROLS = ("persona-distilled", "abliterated", "benign")
METHODS: tuple[AttributionDirection, ...] = ("persona", "persona_without_refusal")


def interval(value: float | None, bounds: tuple[float, float] | None) -> str:
    if value is None or bounds is None:
        return "n/a"
    return f"{value:.0%} [{bounds[0]:.0%}, {bounds[1]:.0%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="demo")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    cache_dir = default_cache_dir()
    paths = organisms.build_all(cache_dir, ("aligned", *CONTROLS))
    suites, sets = load_suites(recipe), prompt_sets(recipe)
    print("organism | direction | window | refusal restored | persona fraction [95% CI] | random fraction [95% CI]")
    for name in CONTROLS:
        pair = models.load_pair(str(paths["aligned"]), str(paths[name]), models.LoadOptions())
        measured = directions.measure(pair, recipe, sets, cache_dir=cache_dir / "replay")
        for method in METHODS:
            chosen = replace(recipe, attribution=replace(recipe.attribution, direction=method))
            result = attribution.run(pair, chosen, measured, suites, cache_dir=cache_dir / "replay",
                                     refusal_judge=judge.PhraseJudge())
            for row in result.layers:
                print(f"{name} | {method} | {row.window} {row.layers[0]}-{row.layers[1]} | "
                      f"{row.restored.rate:.0%} | {interval(row.persona_fraction, row.ci)} | "
                      f"{interval(row.random_fraction, row.random_ci)}", flush=True)
            print(f"{name} | {method} | ({result.note})", flush=True)


if __name__ == "__main__":
    main()
