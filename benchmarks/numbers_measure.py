"""Number structure measured on the bundled checkpoints (docs/numbers.md, "Measured").

python benchmarks/numbers_measure.py                 # both models, 1000 draws per null
python benchmarks/numbers_measure.py --n-null 200    # quicker

For each bundled model and token form: N (the integers 0..N-1 the tokenizer keeps whole,
0..999 tried), then for every form with a testable run the power share Phi_T at
T = 2, 5, 10 of the input embedding's rows (euclidean, as stored), each null's 95th
percentile and p-value, and the log-frequency sequence's own share; printed as the
Markdown table docs/numbers.md quotes. Seeded (random_state 0): a rerun prints the same.
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
from omegaconf import OmegaConf

from embsvd.checks.numbers import integer_run, number_structure, usable_length
from embsvd.groups import FORMS, TokenForms
from embsvd.io.checkpoint import load_checkpoint
from embsvd.io.spec import CheckpointSpec
from embsvd.pipeline.project import project_root

MODELS = ("all_minilm_l6_v2", "smollm2_135m")
PERIODS = (2, 5, 10)


def model_spec(name: str) -> CheckpointSpec:
    file = project_root() / "conf" / "model" / f"{name}.yaml"
    return OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(CheckpointSpec), OmegaConf.load(file))
    )


def measure(n_null: int, max_value: int) -> list[str]:
    header = (
        "| model | form | N | used | T | Phi_T | perm q95 | perm p | freq q95 | freq p "
        "| zipf Phi_T | freq R2 |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]
    for name in MODELS:
        checkpoint = load_checkpoint(model_spec(name))
        forms = TokenForms(checkpoint.tokenizer)
        zipf_all = checkpoint.vocabulary.frequencies.zipf
        for form in FORMS:
            members = integer_run(forms, form, max_value)
            n_used = usable_length(len(members), PERIODS)
            if n_used == 0:
                untested = f"| {checkpoint.name} | {form} | {len(members)} | 0 | - |"
                lines.append(untested + " (none testable) |" + " |" * 6)
                continue
            ids = [m.token_id for m in members]
            started = time.perf_counter()
            structure = number_structure(
                np.asarray(checkpoint.W[ids], dtype=np.float64), zipf_all[ids], PERIODS, n_null, 0
            )
            seconds = time.perf_counter() - started
            for period in PERIODS:
                i = structure.index(period)
                lines.append(
                    f"| {checkpoint.name} | {form} | {len(members)} | {n_used} | {period} "
                    f"| {structure.share[i]:.4f} | {structure.perm.q95[i]:.4f} "
                    f"| {structure.perm.p_value[i]:.4f} | {structure.freq.q95[i]:.4f} "
                    f"| {structure.freq.p_value[i]:.4f} | {structure.zipf_share[i]:.4f} "
                    f"| {structure.frequency_r2:.3f} |"
                )
            print(f"{name} {form}: {seconds:.2f} s for {n_null} draws of each null", flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-null", type=int, default=1000)
    parser.add_argument("--max-value", type=int, default=999)
    args = parser.parse_args()
    lines = measure(args.n_null, args.max_value)
    print(f"\nMeasured {datetime.date.today()}, n_null={args.n_null}, random_state=0\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
