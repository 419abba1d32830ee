"""The top projected tokens as Markdown and LaTeX (booktabs) tables.

One table per run (model, group, variant): a row per rank, and for each component
(numbered from 1) the tokens at its positive and negative end. The group's own tokens are
set in bold; tokens flagged under-trained (``embsvd.io.undertrained``) carry a ``†``.
Tokens are shown as people read them (a row's ``text``, from
``embsvd.io.display``: ``␣`` for a space, ``\\n`` for a newline; see docs/contract.md);
rows without it, from runs logged before ``top_tokens.csv`` had a ``text`` column, show
the raw ``token``. The CSV beside these tables keeps both.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from embsvd.figures.data import Row

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "␣": r"\textvisiblespace{}",
}
SIDES = (("top", "+"), ("bottom", "−"))


def _tables(rows: Sequence[Row]) -> list[tuple[tuple[str, str, str], dict]]:
    """(model, group, variant) -> {(component, side, rank): row}, in the rows' order."""
    key = lambda r: (r["model"], r["group"], r["variant"])  # noqa: E731
    return [
        (k, {(r["component"], r["side"], r["rank"]): r for r in g}) for k, g in groupby(rows, key)
    ]


def _shape(cells: dict) -> tuple[list[int], int]:
    components = sorted({c for c, _, _ in cells})
    return components, max(rank for _, _, rank in cells)


def markdown_tables(rows: Sequence[Row], top_k: int) -> str:
    """GitHub-flavoured Markdown: a heading and a table per run."""
    out = [f"# Top {top_k} tokens at each end of each component\n"]
    out.append(
        "Tokens of the group itself are **bold**; `+`/`−`: the axis' two ends; "
        "`␣`: a space (a token that starts a word); †: flagged under-trained.\n"
    )
    for (model, group, variant), cells in _tables(rows):
        components, n_ranks = _shape(cells)
        out.append(f"## {model} · {group} · {variant}\n")
        header = ["rank"] + [f"c{c + 1} {mark}" for c in components for _, mark in SIDES]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---:"] + [":---"] * (len(header) - 1)) + "|")
        for rank in range(1, n_ranks + 1):
            tokens = [
                _markdown_token(cells.get((c, side, rank))) for c in components for side, _ in SIDES
            ]
            out.append("| " + " | ".join([str(rank), *tokens]) + " |")
        out.append("")
    return "\n".join(out)


def _markdown_token(row: Row | None) -> str:
    if row is None:
        return ""
    # a code span shows the text exactly (␣, \n escapes); | must be escaped even there
    text = shown(row).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    span = f"{fence} {text} {fence}" if "`" in text else f"{fence}{text}{fence}"
    span = f"{span}†" if row.get("undertrained") else span
    return f"**{span}**" if row["in_group"] else span


def latex_tables(rows: Sequence[Row], top_k: int) -> str:
    """A ``table`` with a booktabs ``tabular`` per run (needs ``\\usepackage{booktabs}``;
    tokens are set in ``\\texttt``; non-ASCII tokens need a Unicode-capable engine or
    ``\\usepackage[T1]{fontenc}``)."""
    out = [
        f"% Top {top_k} tokens at each end of each component; bold: tokens of the group;",
        "% \\textvisiblespace{}: a space (a token that starts a word);",
        "% $^\\dagger$: a token flagged under-trained.",
        "% Requires \\usepackage{booktabs}.",
        "",
    ]
    for (model, group, variant), cells in _tables(rows):
        components, n_ranks = _shape(cells)
        columns = "r" + " ".join("ll" for _ in components)
        out += [
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{Top {top_k} tokens at each end of the first {len(components)} "
            f"components: {latex_escape(model)}, {latex_escape(group)}, "
            f"{latex_escape(variant)}.}}",
            f"\\label{{tab:top-tokens:{_label(model, group, variant)}}}",
            f"\\begin{{tabular}}{{{columns}}}",
            "\\toprule",
            " & ".join(["", *(f"\\multicolumn{{2}}{{c}}{{Component {c + 1}}}" for c in components)])
            + " \\\\",
            " ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(components))),
            " & ".join(["Rank", *("$+$ & $-$" for _ in components)]) + " \\\\",
            "\\midrule",
        ]
        for rank in range(1, n_ranks + 1):
            tokens = [
                _latex_token(cells.get((c, side, rank))) for c in components for side, _ in SIDES
            ]
            out.append(" & ".join([str(rank), *tokens]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_token(row: Row | None) -> str:
    if row is None:
        return ""
    token = f"\\texttt{{{latex_escape(shown(row))}}}"
    token = f"{token}$^\\dagger$" if row.get("undertrained") else token
    return f"\\textbf{{{token}}}" if row["in_group"] else token


def shown(row: Row) -> str:
    """The token as the tables show it: the row's display ``text``, else its raw ``token``."""
    return row.get("text") or row["token"]


def _label(*parts: str) -> str:
    return ":".join("".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in p) for p in parts)
