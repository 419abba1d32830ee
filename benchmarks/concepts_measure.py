"""Measure every shipped concept with every estimator on the bundled checkpoints.

    EMBSVD_CACHE_DIR=... .venv/bin/python benchmarks/concepts_measure.py [--n-null 1000]

Prints a Markdown table per model: first-PC share against the random-pair null's 95th
percentile and its p-value, pair consistency (and its null's 95th percentile), the least
leave-one-pair-out |cos|, and the first tokens at each end of the axis. docs/concepts.md
quotes its output under "Measured".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from embsvd.checks.concept_null import analyse_concept
from embsvd.groups import TokenForms
from embsvd.io.checkpoint import load_checkpoint
from embsvd.method.concepts import ESTIMATORS, select_concept_tokens
from embsvd.pipeline.config import checked_settings

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
MODELS = ("all_minilm_l6_v2", "smollm2_135m")
SHOWN = 5  # tokens at each end


def measure(model: str, n_null: int, random_state: int) -> list[str]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        settings = checked_settings(compose("config", overrides=[f"model={model}"]))
    checkpoint = load_checkpoint(settings.model)
    forms = TokenForms(checkpoint.tokenizer)
    analysis = settings.analysis
    lines = [
        f"**{settings.model.display or model}** ({checkpoint.d_vocab} x {checkpoint.d_model}, "
        f"n_null {n_null}, null_match {analysis.null_match}, random_state {random_state})",
        "",
        "| concept | estimator | pairs | first-PC share | null q95 | p | consistency | "
        "null q95 | p | LOO min | positive end | negative end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in settings.concepts.items():
        concept = select_concept_tokens(name, spec, forms, model)
        for estimator in ESTIMATORS:
            result = analyse_concept(
                checkpoint.W,
                dataclasses.replace(concept, estimator=estimator),
                checkpoint.vocabulary,
                top_k=SHOWN,
                n_null=n_null,
                null_match=str(analysis.null_match),
                null_neighbours=analysis.null_neighbours,
                random_state=random_state,
            )
            share, consistency = result.null.first_pc_share, result.null.consistency
            ends = {
                side: " ".join(t.text for t in result.top_tokens if t.side == side)
                for side in ("top", "bottom")
            }
            lines.append(
                f"| {name} | {estimator} | {len(concept.negative)} | {share.observed:.3f} | "
                f"{share.q95:.3f} | {share.p_value:.4f} | {consistency.observed:.3f} | "
                f"{consistency.q95:.3f} | {consistency.p_value:.4f} | "
                f"{result.stability.min_abs_cos:.3f} | {ends['top']} | {ends['bottom']} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-null", type=int, default=1000)
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args()
    print(f"Measured {datetime.date.today().isoformat()}\n")
    for model in MODELS:
        started = time.perf_counter()
        print("\n".join(measure(model, args.n_null, args.random_state)))
        print(f"\n({time.perf_counter() - started:.0f} s)\n")


if __name__ == "__main__":
    main()
