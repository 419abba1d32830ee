"""Under-trained tokens measured on the bundled checkpoints (docs/undertrained.md,
"Measured").

python benchmarks/undertrained_measure.py             # both models, 1000 null draws
python benchmarks/undertrained_measure.py --n-null 200

Per model: the matrix the indicator ran on, the reference set (per kind), the threshold,
how many ordinary tokens are flagged, 15 flagged tokens (highest indicator first), the
suspects named in the issue (``Ġstrugg``, ``Ġenthus``: their indicator and its percentile
among ordinary tokens), and what flagging does to the seed replication (digits and
eu_countries, centered and raw): the extremes marked among the top 20 tokens of each
end of axes 1-3, the first axis' five at each end with marks, and the null's
percentiles with the flagged tokens in the pools (off) and left out (on). Printed as
Markdown. Seeded (random_state 0): a rerun prints the same.
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
from hydra import compose, initialize_config_dir

from embsvd.checks.matching import token_pools
from embsvd.checks.run import ChecksConfig, run_checks
from embsvd.groups import TokenForms, select_single_tokens
from embsvd.io.checkpoint import load_checkpoint
from embsvd.io.undertrained import checkpoint_undertrained
from embsvd.method import geometry
from embsvd.method.analysis import MeanReference, analyze
from embsvd.pipeline.config import checked_settings
from embsvd.pipeline.project import project_root
from embsvd.pipeline.undertrained_job import indicator_matrix

MODELS = ("all_minilm_l6_v2", "smollm2_135m")
SUSPECTS = ("Ġstrugg", "Ġenthus")
TARGETS = ("digits", "eu_countries")
N_EXAMPLES = 15


def settings_of(model: str):
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        return checked_settings(compose("config", overrides=[f"model={model}"]))


def measure_model(model: str, n_null: int) -> list[str]:
    settings = settings_of(model)
    checkpoint = load_checkpoint(settings.model)
    started = time.perf_counter()
    source, matrix = indicator_matrix(settings.model, checkpoint, checkpoint.cache_dir)
    found = checkpoint_undertrained(source)
    seconds = time.perf_counter() - started
    vocab = checkpoint.vocabulary
    strings = vocab.token_strings
    ordinary = np.flatnonzero(~np.isnan(found.indicator))
    ordinary = np.setdiff1d(ordinary, found.reference_ids)
    flagged = found.flagged_ids[np.argsort(-found.indicator[found.flagged_ids], kind="stable")]
    lines = [
        f"### {settings.model.display} ({checkpoint.d_vocab} x {checkpoint.d_model})",
        "",
        f"- matrix: {matrix}; found in {seconds:.1f} s (computed, or read back where kept)",
        f"- rule: {found.rule}",
        f"- reference tokens: {len(found.reference_ids)}; flagged: {len(found.flagged_ids)} "
        f"of {len(ordinary)} ordinary tokens ({100 * len(found.flagged_ids) / len(ordinary):.2f}%)",
        "- 15 flagged tokens, highest indicator first: "
        + ", ".join(f"`{vocab.display_text(i)}` ({found.indicator[i]:.3f})" for i in flagged[:15]),
    ]
    for suspect in SUSPECTS:
        if suspect not in strings:
            lines.append(f"- `{suspect}`: not in the vocabulary")
            continue
        i = strings.index(suspect)
        below = 100 * float((found.indicator[ordinary] < found.indicator[i]).mean())
        lines.append(
            f"- `{suspect}`: indicator {found.indicator[i]:+.3f} (percentile {below:.1f} of "
            f"ordinary tokens; threshold {found.threshold:.3f}): "
            + ("flagged" if i in set(found.flagged_ids.tolist()) else "not flagged")
        )
    lines += pool_changes(vocab, found.excluded_ids)
    lines += ["", *seed_replication(settings, checkpoint, found.excluded_ids, n_null), ""]
    return lines


def pool_changes(vocab, excluded) -> list[str]:
    """The tokens flagging takes out of the null's pools (matched, and ``none``'s)."""
    lines = []
    for name, frequencies in (("matched", vocab.frequencies), ("null_match=none", None)):
        args = (vocab.token_strings, vocab.special_ids, vocab.marker, frequencies)
        before, after = token_pools(*args), token_pools(*args, undertrained_ids=excluded)
        kept = lambda pools: set().union(*pools.ids.values(), *pools.numerals.values())  # noqa: E731
        removed = sorted(kept(before) - kept(after))
        lines.append(
            f"- left out of the {name} pools: {len(removed)} of {len(kept(before))} tokens"
            + (
                ": " + ", ".join(f"`{vocab.display_text(i)}`" for i in removed[:8])
                if removed
                else ""
            )
            + (", ..." if len(removed) > 8 else "")
        )
    return lines


def seed_replication(settings, checkpoint, excluded, n_null: int) -> list[str]:
    """The seed replication's four runs with the flagged tokens in the pools and out."""
    forms = TokenForms(checkpoint.tokenizer)
    groups = {
        name: select_single_tokens(name, spec, checkpoint.tokenizer, "m", forms=forms)
        for name, spec in settings.groups.items()
        if name in TARGETS
    }
    vocab, W = checkpoint.vocabulary, checkpoint.W
    reference = MeanReference(geometry.row_mean(W, checkpoint.ordinary_rows))
    config = ChecksConfig(n_null=n_null, n_resamples=0, heldout=False, n_global=0, order=False)
    lines = [
        "| run | marked of top 20 x 2 ends x 3 axes | axis 1 top 5 | axis 1 bottom 5 "
        "| r raw pct off / on | r centered pct off / on | s1_share pct off / on |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        for center in (True, False):
            result = analyze(W, groups, target, vocab, center=center, reference=reference)
            off = run_checks(W, groups, result, vocab, config).null
            on = run_checks(W, groups, result, vocab, config, undertrained_ids=excluded).null
            marked = [t for t in result.top_tokens if t.token_id in excluded]
            ends = {
                side: " ".join(
                    f"`{t.text}{'†' if t.token_id in excluded else ''}`"
                    for t in result.top_tokens
                    if t.component == 0 and t.side == side and t.rank <= 5
                )
                for side in ("top", "bottom")
            }
            pair = tuple(sorted(TARGETS))
            pct = [
                f"{off.group_mean_corr[v][pair].percentile:.0f} / "
                f"{on.group_mean_corr[v][pair].percentile:.0f}"
                for v in ("raw", "centered")
            ]
            lines.append(
                f"| {target} · {'centered' if center else 'raw'} | {len(marked)}"
                + (f" ({', '.join(sorted({t.text for t in marked})[:6])})" if marked else "")
                + f" | {ends['top']} | {ends['bottom']} | {pct[0]} | {pct[1]} | "
                f"{off.s1_share.percentile:.0f} / {on.s1_share.percentile:.0f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-null", type=int, default=1000)
    args = parser.parse_args()
    print(f"Measured on {datetime.date.today().isoformat()} (n_null={args.n_null})\n")
    for model in MODELS:
        print("\n".join(measure_model(model, args.n_null)))


if __name__ == "__main__":
    main()
