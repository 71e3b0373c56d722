"""Text of the claims table: the printed table and docs/claims.md, both from claims.csv alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from treemdp.claims.catalog import CLAIMS


def number(x: float) -> str:
    """A value for people: 3 significant digits, "inf", "–" for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.2g}"
    return f"{x:.3g}"


def verdict_text(row: pd.Series) -> str:
    """ "reproduced", "refuted", "no data", or "depends on X" (a setting row that depends: on
    the seed, with the seeds that would decide it)."""
    on = row.get("depends_on", "")
    on = "" if not isinstance(on, str) else on
    if on.startswith("(no data"):  # a search variant that could not run
        return on.strip("()")
    if row["verdict"] == "depends" and on:
        return f"depends on {on}"
    needed = row.get("seeds_needed", math.nan)
    if row["verdict"] == "depends" and isinstance(needed, int | float) and math.isfinite(needed):
        return f"depends on seed ({seeds(needed)} would decide it)"
    return row["verdict"]


def seeds(n: float) -> str:
    """ "40 seeds", or "> 100000 seeds" past ``evidence.seeds_needed``'s ceiling."""
    return "> 100000 seeds" if n > 100_000 else f"{int(n)} seeds"


def short(text: str) -> str:
    """A verdict for the printed table: "depends on seed (the intervals straddle; 40 seeds would
    decide them)" → "depends on seed (40 seeds would decide)"."""
    return (
        text.replace("(the intervals straddle; ", "(")
        .replace(" would decide them)", " would decide)")
        .replace(" would decide it)", " would decide)")
    )


def cell(row: pd.Series | None, width: int) -> str:
    """One source's part of a printed line: "median [range] n=20 verdict", cut to ``width``."""
    if row is None:
        return "–".ljust(width)
    n = int(row["n_seeds"]) if "n_seeds" in row and row["n_seeds"] == row["n_seeds"] else 0
    text = (
        f"{number(row['value'])} [{number(row['ci_low'])}, {number(row['ci_high'])}]"
        f"{f' n={n}' if n else ''}: {short(verdict_text(row))}"
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def llm_note(llm: pd.DataFrame, n_folders: int) -> str:
    """What the LLM side rests on: runs, settings, the real number of seeds per setting, and the
    fields that keep settings of one size, objective and β apart."""
    runs = llm.drop_duplicates("run")
    per = runs.groupby(["variant", "size", "objective", "beta"])["run"].nunique()
    n = sorted(set(per))
    seeds = f"{n[0]} seed{'s' * (n[0] != 1)}" if len(n) == 1 else f"{n[0]}–{n[-1]} seeds"
    note = (
        f"LLM side: {len(runs)} runs from {n_folders} folders, {len(per)} settings, {seeds} per "
        "setting"
    )
    if n[-1] == 1:
        note += " (one seed per setting: no intervals, the rules read the point value)"
    variants = sorted(set(runs["variant"]) - {""})
    if variants:
        note += (
            f"; settings of one size, objective and β that differ in more than the seed are "
            f"kept apart, never pooled: {'; '.join(variants)}"
        )
    return note + "."


def summary_lines(claims: pd.DataFrame, width: int = 60) -> list[str]:
    """The printed table: one line per claim, the toy's (and theory's) summary beside the LLM's:
    median over settings [range over settings], the fewest seeds behind a setting, verdict."""
    summary = claims[claims["kind"] == "summary"]
    lines = [f"{'claim':<5} {'toy':<{width}}  {'llm':<{width}}  (claim)"]
    for claim, g in summary.groupby("claim", sort=False):
        by = {r["source"]: r for _, r in g.iterrows()}
        toy = by.get("toy", by.get("theory"))
        lines.append(
            f"{claim:<5} {cell(toy, width):<{width}}  {cell(by.get('llm'), width):<{width}}  "
            f"({CLAIMS[claim]})"
        )
    return lines


def _md_cell(row: pd.Series | None) -> str:
    if row is None:
        return "–"
    n = int(row["n_seeds"]) if "n_seeds" in row and row["n_seeds"] == row["n_seeds"] else 0
    return (
        f"{number(row['value'])} ({number(row['ci_low'])} … {number(row['ci_high'])})"
        f"{f', n = {n}' if n else ''}: **{verdict_text(row)}**"
    )


def markdown_summary(claims: pd.DataFrame) -> str:
    """The one-row-per-claim table in Markdown: the toy's (or theory's) and the LLM family's
    verdicts side by side (median over settings (range over settings), fewest seeds)."""
    summary = claims[claims["kind"] == "summary"]
    out = [
        "| claim | what the paper says | statistic | rule | toy | LLM |",
        "|---|---|---|---|---|---|",
    ]
    for claim, g in summary.groupby("claim", sort=False):
        by = {r["source"]: r for _, r in g.iterrows()}
        first = g.iloc[0]
        toy = by.get("toy", by.get("theory"))
        stat = first["statistic"].split(";")[0].replace("|", "\\|")  # a table cell
        out.append(
            f"| {claim} | {CLAIMS[claim]} | {stat} | "
            f"`{first['rule']}` | {_md_cell(toy)} | {_md_cell(by.get('llm'))} |"
        )
    return "\n".join(out)


def markdown_settings(claims: pd.DataFrame) -> str:
    """Every setting row in Markdown, grouped by claim: value, interval, seeds, MDE, verdict
    (and for 3a on the LLM side, the per-run flag's rate beside its shuffled-checkpoint null)."""
    rows = claims[claims["kind"] == "setting"]
    out = []
    for claim, g in rows.groupby("claim", sort=False):
        out.append(
            f"**{claim}**: {CLAIMS[claim]}; statistic: {g['statistic'].iloc[0]}; "
            f"rule `{g['rule'].iloc[0]}`\n"
        )
        null = "null_rate" in g and g["null_rate"].notna().any()
        head = "| setting | value | 95% CI | seeds | MDE | verdict |"
        out.append(head + (" flag rate (shuffled null) |" if null else ""))
        out.append("|---|---|---|---|---|---|" + ("---|" if null else ""))
        for _, r in g.iterrows():
            ci = f"[{number(r['ci_low'])}, {number(r['ci_high'])}]"
            n = int(r["n_seeds"]) if "n_seeds" in r and r["n_seeds"] == r["n_seeds"] else 0
            line = (
                f"| {r['setting']} | {number(r['value'])} | {ci} | {n or '–'} | "
                f"{number(r.get('mde', math.nan))} | {verdict_text(r)} |"
            )
            if null:
                line += (
                    f" {number(r['flag_rate'])} ({number(r['null_rate'])}, "
                    f"[{number(r['null_low'])}, {number(r['null_high'])}], "
                    f"p = {number(r['null_p'])}) |"
                    if r.get("null_rate") == r.get("null_rate")
                    else " – |"
                )
            out.append(line)
        out.append("")
    return "\n".join(out)


def markdown_search(search: pd.DataFrame) -> str:
    """The condition search: one row per (claim, variant) with the claim's summary verdict."""
    out = []
    for claim, g in search.groupby("claim", sort=False):
        out.append(
            f"**{claim}**: {CLAIMS[claim]}; {g['statistic'].iloc[0].split(';')[0]}; "
            f"rule `{g['rule'].iloc[0]}`\n"
        )
        out.append(
            "| variant | factor | median over settings (range) | settings reproduced / refuted"
            " / depend | verdict |"
        )
        out.append("|---|---|---|---|---|")
        for _, r in g.iterrows():
            counts = (
                f"{int(r['n_reproduced'])} / {int(r['n_refuted'])} / {int(r['n_depends'])}"
                if r["n_settings"] == r["n_settings"] and r["n_settings"] > 0
                else "–"
            )
            out.append(
                f"| {r['variant']} | {r['factor']} | {number(r['value'])} "
                f"({number(r['ci_low'])} … {number(r['ci_high'])}) | {counts} | {verdict_text(r)} |"
            )
        out.append("")
    return "\n".join(out)


def what_moved(search: pd.DataFrame, *, base: str = "base") -> str:
    """Per claim: how the share of settings that reproduce (refute) it moves across variants.

    The summary verdict of a claim is coarse (it depends as soon as one setting differs), so this
    compares the tallies: the base's, the variants with the largest share of reproducing and of
    refuting settings, and whether any variant reproduces the claim in every setting.
    """
    out = []
    for claim, g in search.groupby("claim", sort=False):
        g = g[g["n_settings"].fillna(0) > 0]
        ref = g[g["variant"] == base]
        if ref.empty:
            continue
        share = g.assign(
            rep=g["n_reproduced"] / g["n_settings"], ref=g["n_refuted"] / g["n_settings"]
        )

        def tally(r) -> str:
            return (
                f"{r['variant']} ({int(r['n_reproduced'])} reproduced, {int(r['n_refuted'])} "
                f"refuted of {int(r['n_settings'])}; median {number(r['value'])})"
            )

        b = share[share["variant"] == base].iloc[0]
        others = share[share["variant"] != base]
        most_rep = others.sort_values(["rep", "ref"], ascending=[False, True], kind="stable")
        most_ref = others.sort_values(["ref", "rep"], ascending=[False, True], kind="stable")
        most_rep, most_ref = most_rep.head(3), most_ref.head(3)
        every = list(share.loc[share["verdict"] == "reproduced", "variant"])
        out.append(
            f"- **{claim}**: {tally(b)}. Most reproducing: "
            f"{'; '.join(tally(r) for _, r in most_rep.iterrows())}. Most refuting: "
            f"{'; '.join(tally(r) for _, r in most_ref.iterrows())}. Reproduced in every "
            f"setting under: {', '.join(every) or 'no variant'}."
        )
    return "\n".join(out)


GENERATED_END = "<!-- end of the generated part: text below this line is kept on regeneration -->"
"""Marks where docs/claims.md's generated part ends (hand-written notes may follow)."""

INTRO = """# The paper's claims, checked

Generated by `python experiments/claims.py --docs docs/claims.md` (with `--search` for the
condition search) from its own output (the data are in `docs/claims_data/`); a test
(`tests/test_claims.py`) regenerates this part from that data and fails if it differs, and checks
that every verdict follows from its rule. Do not edit above the end marker.

**How a verdict is reached.** Each claim of Rafailov et al. (2024) is a statistic per setting
(objective, model size, β, ...), reduced to one value per seed and given a 95 % interval over
seeds (Student t; a bootstrap over seeds where the statistic is a fit or a seed-mean curve; all
through `treemdp.claims.evidence`). A seed is a new problem, new pairs and a new initialisation.
A rule (`treemdp.claims.rules`) reads the interval: `above(threshold=t)` is *reproduced* when the
whole interval is above t, *refuted* when it is at or below t, and *depends* (on the seed) only
when it straddles t; `below` likewise; `inside(low, high)` is reproduced when the interval lies in
[low, high] and refuted when it misses it. A statistic that could not be computed is *no data*.
Every setting row carries `n_seeds` (the seeds behind its interval), `mde` (the smallest effect a
two-sided t-test at 5 % detects with power 0.8 from that many seeds at the observed spread) and,
where the interval straddles, `seeds_needed`: how many seeds would separate the observed value
from the rule's line at that spread. A claim's summary verdict combines its settings: reproduced
(refuted) only if every setting with data is; otherwise it *depends*, and `depends on X` names the
factor whose levels separate the verdicts, nested where needed, `seed (...; N seeds would decide
them)` when every interval straddles its line, and `setting (a tally; see the rows)` when no
factor separates them. The summary row's value is the median over settings and its range is the
range over settings (not an interval).

**Two sources side by side.** *toy*: sizes are policy capacities, `tabular` (no shared
parameters) and tanh networks `mlp4 < mlp16 < mlp64`; trends over "model size" (6b, 8a) use the
networks only. Claims 1, 1b, 2 come from `experiments/ood_mass.py` (one preference pair, 2000
steps) and 3–9 from `experiments/toy_scaling.py` (512 pairs, one epoch, concave gold reward, R-DPO
with α = 0.3), both at `--seeds` seeds (default 20). *llm*: the LLM family, `llm_overopt.py` on
the tree language (a GPT-NeoX of `--llm-sizes`, random init, SFT on π_ref's samples, then one
epoch of DPO, IPO, SLiC and R-DPO at β 0.1 and 0.3, every checkpoint scored exactly) over
`--llm-seeds` seeds (default 16), plus any `--llm-runs` folders. LLM runs are pooled as seeds only
when their configurations differ in the seed alone (`treemdp.runs.identity`); others are kept
apart as their own settings (`variant=(...)` names what differs). "Rises then falls" is decided
on seed-mean curves (3b); the per-run flag of 3a is shown beside the rate that checkpoints
shuffled within each run give (`evidence.label_null`). Objectives are compared at matched β and
at matched final KL (within a factor 1.5) or matched final win rate (within 0.02): a pair of runs
of the same size and seed, the closest one of the other objective.
"""


def page(data: str | Path) -> str:
    """docs/claims.md's generated part from ``data``/{claims.csv, run.json, search.csv}."""
    data = Path(data)
    claims = pd.read_csv(data / "claims.csv", keep_default_na=False, na_values=[""])
    claims["depends_on"] = claims["depends_on"].fillna("")
    meta = json.loads((data / "run.json").read_text())
    out = [INTRO]
    out.append("## The verdicts\n")
    out.append(
        f"`{meta['command']}`: {meta['seconds']:.0f} s wall"
        + (f", {meta['cpu_seconds']:.0f} s CPU" if "cpu_seconds" in meta else "")
        + f" ({meta['load_start']} at the start, {meta['load_end']} at the end: the 2 cores were "
        "shared with other jobs; finished experiment runs are reused). Its printed table:\n"
    )
    out.append(
        "```\n" + "\n".join(summary_lines(claims)) + "\n" + "\n".join(meta["notes"]) + "\n```\n"
    )
    out.append(markdown_summary(claims) + "\n")
    search_path = data / "search.csv"
    if search_path.exists():
        found = pd.read_csv(search_path, keep_default_na=False, na_values=[""])
        found["depends_on"] = found["depends_on"].fillna("")
        out.append("## Under which conditions do claims 3b, 4, 5b and 8a hold?\n")
        out.append(
            "Each variant changes one thing from the base (toy_scaling defaults: concave gold "
            "reward κ = 1, ρ = 1, 512 pairs, one epoch, Adam lr 0.03, SFT reference of 100 steps, "
            "β ∈ {0.01, 0.03, 0.1, 0.3, 1}, networks mlp4/mlp16/mlp64, 3 seeds) and the claim is "
            "decided by the same rules over that variant's settings.\n"
        )
        out.append(what_moved(found) + "\n")
        out.append(markdown_search(found))
    out.append("## Every setting\n")
    out.append(markdown_settings(claims))
    return "\n".join(out).rstrip() + "\n\n" + GENERATED_END + "\n"


def generated_part(text: str) -> str:
    """The generated part of a docs page (up to and including the end marker)."""
    if GENERATED_END not in text:
        raise ValueError("the page has no end marker of its generated part")
    return text[: text.index(GENERATED_END) + len(GENERATED_END)] + "\n"
