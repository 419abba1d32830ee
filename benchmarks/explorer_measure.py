"""The vocabulary explorer's cost: its table and page on the bundled checkpoints and on a
256k-token synthetic vocabulary, and (with ``--browser``) the page in headless chromium.

    .venv/bin/python benchmarks/explorer_measure.py [--browser] [--out DIR]

Per case: the table's size and write time (``write_explorer_table``, with the display
texts already computed), the page's size and build time (``write_explorer_page``, from
the table), each in wall and CPU seconds (a shared machine inflates the wall time); in
the browser, the time until the page has drawn every token, one redraw, a search and
the CSV export of all tokens. docs/explorer.md quotes the numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from embsvd.figures.explorer import ExplorerRun, write_explorer_page  # noqa: E402
from embsvd.groups import GroupSpec, select_single_tokens  # noqa: E402
from embsvd.io.checkpoint import load_checkpoint  # noqa: E402
from embsvd.io.spec import CheckpointSpec  # noqa: E402
from embsvd.method.analysis import analyze  # noqa: E402
from embsvd.tracking.artifacts import write_explorer_table  # noqa: E402

SYNTHETIC_TOKENS = 256_000


def bundled_case(model: str) -> tuple[np.ndarray, list[str], dict, list[int]]:
    """The digits axes of a bundled checkpoint: projections, texts, groups, specials."""
    spec = OmegaConf.to_object(
        OmegaConf.merge(
            OmegaConf.structured(CheckpointSpec),
            OmegaConf.load(PROJECT_ROOT / "conf" / "model" / f"{model}.yaml"),
        )
    )
    checkpoint = load_checkpoint(spec)
    words = OmegaConf.load(PROJECT_ROOT / "conf" / "groups" / "digits.yaml")
    group_spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GroupSpec), words.digits))
    digits = select_single_tokens("digits", group_spec, checkpoint.tokenizer, spec.name)
    vocab = checkpoint.vocabulary
    result = analyze(checkpoint.W, {"digits": digits}, "digits", vocab)
    start = time.perf_counter()
    texts = list(vocab.display_texts)  # once per checkpoint in a sweep's process
    print(f"{model}: display texts of {len(texts)} tokens in {time.perf_counter() - start:.2f} s")
    return result.projections, texts, {"digits": digits.token_ids}, sorted(vocab.special_ids)


def synthetic_case(n: int = SYNTHETIC_TOKENS, k: int = 3) -> tuple:
    rng = np.random.default_rng(0)
    texts = [f"␣tok{i}" for i in range(n)]
    return rng.normal(size=(n, k)), texts, {"digits": list(range(10))}, [0, 1, 2]


def measure(name: str, case: tuple, folder: Path) -> dict:
    projections, texts, groups, special = case
    table = folder / f"{name}.csv"
    start, cpu = time.perf_counter(), time.process_time()
    write_explorer_table(table, projections, texts, groups, special)
    table_s, table_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    page = folder / f"{name}.html"
    start, cpu = time.perf_counter(), time.process_time()
    run = ExplorerRun(name, table, name, "digits", (0.5, 0.3, 0.2))
    write_explorer_page([run], page, f"{name}: vocabulary explorer")
    page_s, page_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return {
        "case": name,
        "tokens": len(texts),
        "axes": projections.shape[1],
        "table_MB": table.stat().st_size / 1e6,
        "table_s": table_s,
        "table_cpu_s": table_cpu_s,
        "page_MB": page.stat().st_size / 1e6,
        "page_s": page_s,
        "page_cpu_s": page_cpu_s,
        "page": page,
    }


def in_browser(page: Path) -> dict:
    from tests.browser import Chromium

    with Chromium(command_timeout=120) as browser:
        start = time.perf_counter()
        browser.open(page.as_uri())
        while not browser.evaluate("!!(window.explorer && window.explorer.ready)"):
            time.sleep(0.02)
        ready = time.perf_counter() - start
        timed = browser.evaluate(
            """(() => {
              const t = (f) => { const s = performance.now(); f(); return performance.now() - s; };
              return [t(() => explorer.draw()), t(() => explorer.search('tok123')),
                      t(() => explorer.csvText('all'))]; })()"""
        )
    return {"ready_s": ready, "redraw_ms": timed[0], "search_ms": timed[1], "csv_ms": timed[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browser", action="store_true", help="time the page in chromium")
    parser.add_argument("--out", type=Path, help="keep the tables and pages here")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="explorer-measure-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = {
        "minilm_digits": lambda: bundled_case("all_minilm_l6_v2"),
        "smollm2_digits": lambda: bundled_case("smollm2_135m"),
        "synthetic_256k": synthetic_case,
    }
    for name, make in cases.items():
        row = measure(name, make(), folder)
        if args.browser:
            row.update(in_browser(row["page"]))
        row.pop("page")
        print(
            " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )


if __name__ == "__main__":
    main()
