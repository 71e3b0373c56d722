"""treemdp.claims and experiments/claims.py: each decision rule on constructed statistics (holds,
fails, at the boundary), the statistics on small hand-checked tables, docs/claims.md in sync with
its data, and the command end to end on the quick config."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.scripts import ROOT, load_script
from treemdp.claims import catalog, report, rules
from treemdp.claims import statistics as st
from treemdp.runs.cli import flag_values, with_flags

R, F, D = rules.REPRODUCED, rules.REFUTED, rules.DEPENDS

# ---------------------------------------------------------------------------------------------
# Decision rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [
        ((0.05, 0.03, 0.07), R),  # whole interval above 0.02: holds
        ((0.01, 0.0, 0.015), F),  # whole interval below: fails
        ((0.03, 0.02, 0.04), D),  # low end exactly at the threshold: not shown
        ((0.01, 0.0, 0.02), F),  # high end exactly at the threshold: "above" is refuted
        ((0.02, 0.0, 0.04), D),  # straddles: depends on the seed
        ((0.05, math.nan, math.nan), R),  # no interval (one seed): the value decides
        ((0.02, math.nan, math.nan), F),
        ((math.nan, math.nan, math.nan), rules.NO_DATA),  # no data: not "depends on seed"
    ],
)
def test_above(interval, verdict):
    assert rules.above(*interval, threshold=0.02) == verdict


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [
        ((0.4, 0.3, 0.55), R),
        ((0.9, 0.8, 1.0), F),
        ((0.55, 0.5, 0.6), D),  # high end at the threshold: not strictly below
        ((0.7, 0.6, 0.8), F),  # low end at the threshold: refuted
        ((0.6, 0.5, 0.7), D),
        ((math.inf, 0.9, math.inf), F),  # a fit without a peak (d* = inf) is a value, not NaN
        ((0.86, 0.86, math.inf), F),  # an infinite upper end is not replaced by the value
    ],
)
def test_below(interval, verdict):
    assert rules.below(*interval, threshold=0.6) == verdict


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [
        ((0.0, -0.2, 0.2), R),
        ((0.0, -0.3, 0.3), R),  # both ends on the boundary: inside (closed interval)
        ((0.6, 0.4, 0.8), F),
        ((-0.6, -0.8, -0.4), F),
        ((0.3, 0.1, 0.5), D),
        ((0.3, 0.3, 0.5), D),  # touches the edge from outside: not missed, not inside
    ],
)
def test_inside(interval, verdict):
    assert rules.inside(*interval, low=-0.3, high=0.3) == verdict


def test_rule_arguments_are_checked():
    with pytest.raises(ValueError, match="ci_low"):
        rules.above(0.5, 0.6, 0.4, threshold=0)
    with pytest.raises(ValueError, match="low must be <= high"):
        rules.inside(0.0, -1, 1, low=1, high=-1)
    with pytest.raises(ValueError, match="rule must be one of"):
        rules.describe("around", threshold=1)
    with pytest.raises(ValueError, match="verdicts must"):
        rules.combine([])


def test_rule_text_round_trips_and_applies():
    text = rules.describe("inside", low=0.1, high=0.4)
    assert text == "inside(low=0.1, high=0.4)"
    assert rules.parse(text) == ("inside", {"low": 0.1, "high": 0.4})
    assert rules.apply(text, 0.25, 0.2, 0.3) == R
    assert rules.apply(text, 0.9, 0.8, 1.0) == F


def test_combine():
    assert rules.combine([R, R]) == R
    assert rules.combine([F, F, F]) == F
    assert rules.combine([R, F]) == D
    assert rules.combine([R, D]) == D


def test_depends_on_names_the_separating_factor():
    rows = pd.DataFrame(
        {
            "size": ["tabular", "tabular", "mlp4", "mlp4"],
            "objective": ["dpo", "ipo", "dpo", "ipo"],
            "verdict": [F, F, R, R],
        }
    )
    assert (
        rules.depends_on(rows, ["objective", "size"]) == "size (tabular: refuted; mlp4: reproduced)"
    )
    # no single factor separates: the pure level is named, the mixed one explained inside it
    rows["verdict"] = [F, F, R, D]
    assert rules.depends_on(rows, ["objective", "size"]) == (
        "size (tabular: refuted; mlp4: objective (dpo: reproduced; ipo: depends))"
    )
    assert rules.depends_on(rows.assign(verdict=D), ["size"]) == "seed (the intervals straddle)"
    assert rules.depends_on(rows.assign(verdict=R), ["size"]) == ""


# ---------------------------------------------------------------------------------------------
# Statistics on hand-checked tables
# ---------------------------------------------------------------------------------------------


def test_t_interval_by_hand():
    # (1, 2, 3): mean 2, sd 1, t_{2, 0.975} = 4.302653, half-width 4.302653 / √3 = 2.484138.
    mean, lo, hi = st.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    np.testing.assert_allclose([lo, hi], [2 - 2.484138, 2 + 2.484138], atol=1e-6)
    assert math.isnan(st.t_interval([5.0])[1]) and st.t_interval([5.0])[0] == 5.0


def test_weighted_quantiles_by_hand():
    q = st.weighted_quantiles([3.0, 1.0, 2.0], [0.3, 0.2, 0.5], [0.1, 0.2, 0.5, 0.75])
    assert q == (1.0, 1.0, 2.0, 3.0)


def test_bootstrap_over_two_seeds_is_exact():
    # Seeds a (x = 0) and b (x = 1). Resamples {a,a}, {a,b}, {b,b} with probabilities ¼, ½, ¼
    # give means 0, ½, 1: the 2.5% quantile is 0, the 97.5% is 1; a 40% interval is [½, ½].
    frame = pd.DataFrame({"seed": ["a", "b"], "x": [0.0, 1.0]})
    mean = lambda t: t["x"].mean()  # noqa: E731
    assert st.bootstrap_seeds(frame, mean) == (0.5, 0.0, 1.0)
    assert st.bootstrap_seeds(frame, mean, level=0.4) == (0.5, 0.5, 0.5)
    value, lo, hi = st.bootstrap_seeds(frame, mean, n_resamples=0)
    assert value == 0.5 and math.isnan(lo) and math.isnan(hi)


def checkpoint_rows(curves: dict) -> pd.DataFrame:
    """A checkpoint table from {(objective, beta, seed): [(win, kl, length), ...]} (size "s")."""
    rows = []
    for (objective, beta, seed), points in curves.items():
        run = f"{objective}/{beta}/{seed}"
        for k, (win, kl, length) in enumerate(points):
            rows.append(
                {
                    "run": run, "objective": objective, "beta": beta, "size": "s",
                    "size_rank": 0, "seed": seed, "step": k, "fraction": k / (len(points) - 1),
                    "final": k == len(points) - 1, "kl_reverse": kl, "kl_forward": kl,
                    "d": math.sqrt(kl), "d_forward": math.sqrt(kl), "win_rate": win,
                    "reward_accuracy": 0.5, "loss": 0.7, "length": length, "length_r2": 0.5,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_run_table_and_the_two_kinds_of_fall_by_hand():
    # Seed 0 peaks at 0.7 mid-way and ends at 0.6 (drop 0.1, peak at fraction ½); seed 1 rises
    # to 0.7 at the end (drop 0). The seed-mean curve (0.5, 0.65, 0.65) never falls: drop 0.
    table = checkpoint_rows(
        {
            ("dpo", 0.1, 0): [(0.5, 0, 3), (0.7, 1, 3), (0.6, 4, 2)],
            ("dpo", 0.1, 1): [(0.5, 0, 3), (0.6, 1, 3), (0.7, 4, 2)],
        }
    )
    runs = st.run_table(table).set_index("seed")
    np.testing.assert_allclose(runs["drop"], [0.1, 0.0], atol=1e-12)
    assert list(runs["peak_fraction"]) == [0.5, 1.0]
    assert list(runs["degrade_fraction"]) == [0.5, 1.0]
    assert list(st.run_table(table, fall=0.2)["degrade_fraction"]) == [1.0, 1.0]  # 0.1 is no fall
    assert list(runs["kl_final"]) == [4, 4] and list(runs["length_final"]) == [2, 2]
    assert st.seed_mean_drop(table) == pytest.approx(0.0)


def test_fit_rmse_ratio_is_zero_when_the_data_follow_the_rl_form():
    d = np.linspace(0.1, 3, 12)
    win = 0.5 + d * (0.3 - 0.15 * np.log(d))
    table = checkpoint_rows(
        {("dpo", 0.1, 0): [(0.5, 0.0, 1), *[(w, x**2, 1) for w, x in zip(win, d, strict=True)]]}
    )
    assert st.fit_rmse_ratio(table) < 1e-6
    assert st.fitted_peak_ratio(table.assign(final=True)) == pytest.approx(np.e / 3, rel=1e-6)


def test_match_runs_pairs_the_closest_within_tolerance():
    a = pd.DataFrame({"size": "s", "seed": 0, "kl_final": [1.0, 10.0], "x": [1, 2]})
    b = pd.DataFrame({"size": "s", "seed": 0, "kl_final": [1.2, 3.0, 30.0], "x": [3, 4, 5]})
    p = st.match_runs(a, b, on="kl_final", tolerance=math.log(1.5), log=True)
    # KL 1 pairs with 1.2 (ratio 1.2 ≤ 1.5); KL 10's closest is 3 or 30 (ratio 3.3): dropped.
    assert list(p["x_a"]) == [1] and list(p["x_b"]) == [3]
    np.testing.assert_allclose(p["gap"], [math.log(1.2)])


def test_ood_statistics_by_hand():
    metrics = pd.DataFrame(
        {
            "run": [0, 0, 0],
            "objective": "dpo",
            "beta": 0.1,
            "seed": 0,
            "step": [0, 10, 20],
            "mass_ood": [0.1, 0.2, 0.5],
            "mass_in_dist": [0.9, 0.8, 0.5],
        }
    )
    growth = st.ood_growth(metrics).iloc[0]
    assert growth["ood_gain"] == pytest.approx(0.4) and growth["in_dist_fall"] == pytest.approx(0.4)
    # final OOD probabilities 0.3 and 0.1: (0.4)² / (0.09 + 0.01) = 1.6; step 0 is ignored.
    responses = pd.DataFrame(
        {
            "run": 0,
            "step": [0, 0, 20, 20, 20],
            "response": [1, 2, 1, 2, 3],
            "logp": np.log([0.5, 0.5, 0.3, 0.1, 0.6]),
            "role": ["ood", "ood", "ood", "ood", "chosen"],
        }
    )
    assert st.effective_ood_number(responses).loc[0] == pytest.approx(1.6)


def test_spearman_within_size_and_its_undefined_cases():
    assert st.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(st.spearman([1, 2], [1, 2])) and math.isnan(st.spearman([1, 1, 1], [1, 2, 3]))


# ---------------------------------------------------------------------------------------------
# The catalog: verdicts only ever come from the rules
# ---------------------------------------------------------------------------------------------


def test_make_row_verdict_follows_the_claims_rule():
    assert catalog.make_row("3a", 0.05, 0.03, 0.07, size="mlp4")["verdict"] == R
    assert catalog.make_row("3a", 0.01, 0.0, 0.015, size="mlp4")["verdict"] == F
    row = catalog.make_row("4", 0.5, 0.4, 0.7, kl="reverse")
    assert (
        row["verdict"] == D and row["setting"] == "kl=reverse" and row["rule"] == catalog.RULE["4"]
    )
    assert set(catalog.CLAIMS) == set(catalog.STATISTIC) == set(catalog.RULE)


def test_summary_combines_settings_and_names_what_it_depends_on():
    settings = pd.DataFrame(
        [
            catalog.make_row("9a", 0.0, 0.0, 0.0, source="toy", size="tabular"),
            catalog.make_row("9a", 0.05, 0.03, 0.07, source="toy", size="mlp4"),
        ]
    )
    summary = catalog.summarise(settings).iloc[0]
    assert summary["verdict"] == D
    assert summary["depends_on"] == "size (tabular: refuted; mlp4: reproduced)"
    assert (summary["value"], summary["ci_low"], summary["ci_high"]) == (0.025, 0.0, 0.05)


def test_theory_claim_is_reproduced_by_the_three_response_example():
    row = catalog.evaluate_theory().iloc[0]
    assert row["value"] < 1e-12 and row["verdict"] == R


# ---------------------------------------------------------------------------------------------
# docs/claims.md in sync with its data, and the command end to end
# ---------------------------------------------------------------------------------------------

DOCS = ROOT / "docs" / "claims.md"
DATA = ROOT / "docs" / "claims_data"


def test_docs_page_is_generated_from_its_data():
    text = DOCS.read_text()
    assert report.generated_part(text) == report.page(DATA), (
        "docs/claims.md is out of date: python experiments/claims.py --search --docs docs/claims.md"
    )
    assert "docs/claims.md" in (ROOT / "README.md").read_text()


def test_docs_verdicts_follow_from_the_rules():
    claims = pd.read_csv(DATA / "claims.csv", keep_default_na=False, na_values=[""])
    settings = claims[claims["kind"] == "setting"]
    assert len(settings) > 100
    for _, r in settings.iterrows():
        assert rules.apply(r["rule"], r["value"], r["ci_low"], r["ci_high"]) == r["verdict"], r
    for (source, claim), g in settings.groupby(["source", "claim"]):
        row = claims[(claims["kind"] == "summary") & (claims["source"] == source)]
        assert row.loc[row["claim"] == claim, "verdict"].item() == rules.combine(list(g["verdict"]))


def test_claims_command_end_to_end_on_the_quick_config(tmp_path, capsys):
    claims = load_script("experiments/claims.py")
    toy = load_script("experiments/toy_scaling.py")
    ood = load_script("experiments/ood_mass.py")
    paper = claims.paper_runs
    results = tmp_path / "results"
    # Made here in-process (a subprocess would start Python again); claims.py must reuse them.
    toy_settings = {**paper.TOY_QUICK, "n_resamples": 0, "out": str(results / "toy_scaling")}
    toy.main(with_flags(toy.Config(), toy_settings))
    for policy in claims.OOD_POLICIES:
        settings = {**paper.OOD_MASS, "policy": policy, **paper.OOD_MASS_QUICK}
        ood.main(with_flags(ood.Config(), {**settings, "out": str(results / "ood_mass")}))
    from tests.test_figures_scaling import write_llm_run

    for model in ("pythia-1b", "pythia-2.8b", "pythia-6.9b"):  # LLM evaluation runs: one seed
        for objective in ("dpo", "ipo"):
            for beta in (0.1, 0.5):
                folder = results / "llm_eval" / f"{model}-{objective}-{beta}"
                write_llm_run(folder, model, objective=objective, beta=beta)
    for seed, peak in enumerate((0.6, 0.55, 0.58)):  # a tree-language family: three seeds
        for objective in ("dpo", "ipo"):
            overopt_run(results / "family", lr=1e-3, seed=seed, peak=peak, objective=objective)
    config = claims.Config(
        out=str(tmp_path / "claims"), results=str(results), quick=True, n_resamples=10,
        docs=str(tmp_path / "docs" / "claims.md"), progress=False, llm_seeds=0, jobs=1,
        llm_runs=(str(results / "llm_eval"), str(results / "family")),
    )  # fmt: skip
    folder = claims.main(config)
    out = capsys.readouterr().out
    table = pd.read_csv(folder / "claims.csv")
    assert list(table.columns[:7]) == [
        "claim", "statistic", "value", "ci_low", "ci_high", "setting", "verdict",
    ]  # fmt: skip
    assert {"source", "n_seeds", "mde", "seeds_needed"} <= set(table.columns)
    assert set(table["verdict"]) <= set(rules.VERDICTS)
    assert {"1", "2", "3a", "4", "5b", "9b", "P1"} <= set(table["claim"])
    assert "LLM side: 18 runs from 2 folders, 14 settings, 1–3 seeds per setting" in out
    assert f"results in {folder}" in out
    (head,) = [line for line in out.splitlines() if line.startswith("claim ")]
    assert head.split()[:3] == ["claim", "toy", "llm"]  # toy and LLM verdicts side by side
    llm = table[(table["source"] == "llm") & (table["kind"] == "setting")]
    assert {"1", "1b", "3a", "5a", "6b", "7a"} <= set(llm["claim"])
    pythia = llm[llm["size"].str.startswith("pythia", na=False)]
    assert pythia["ci_low"].isna().all() and (pythia["n_seeds"] <= 1).all()  # one seed each
    tiny = llm[llm["size"] == "tiny"]
    assert (tiny.loc[tiny["verdict"] != rules.NO_DATA, "n_seeds"] == 3).all()
    flags = tiny[tiny["claim"] == "3a"]
    assert flags["null_rate"].notna().all() and (flags["flag_rate"] == 1).all()
    page = Path(config.docs).read_text()
    assert report.generated_part(page) == report.page(tmp_path / "docs" / "claims_data")


def test_power_columns_and_the_seeds_that_would_decide_a_straddling_interval():
    from treemdp.claims import evidence

    # 3a: above(0.02); 0.03 ± 0.02 over 20 seeds of spread 0.04 straddles 0.02
    row = catalog.make_row("3a", 0.03, 0.01, 0.05, 20, 0.04, source="toy", size="mlp4")
    assert row["verdict"] == D and row["n_seeds"] == 20
    assert row["mde"] == pytest.approx(evidence.mde(0.04, 20))
    assert row["seeds_needed"] == evidence.seeds_needed(0.01, 0.04) > 20
    assert report.verdict_text(pd.Series(row)) == (
        f"depends on seed ({evidence.seeds_needed(0.01, 0.04)} seeds would decide it)"
    )
    decided = catalog.make_row("3a", 0.05, 0.03, 0.07, 20, 0.04, source="toy", size="mlp16")
    assert decided["verdict"] == R and math.isnan(decided["seeds_needed"])
    summary = catalog.summarise(pd.DataFrame([row, decided])).iloc[0]
    assert summary["verdict"] == D and summary["n_seeds"] == 20
    summary = catalog.summarise(pd.DataFrame([row])).iloc[0]
    needed = evidence.seeds_needed(0.01, 0.04)
    assert (
        summary["depends_on"] == f"seed (the intervals straddle; {needed} seeds would decide them)"
    )


def test_the_table_defaults_to_20_toy_seeds_and_16_llm_seeds_on_the_tree_language():
    claims = load_script("experiments/claims.py")
    config = claims.Config()
    assert config.seeds >= 20 and claims.seed_list(config) == {"seed": tuple(range(config.seeds))}
    seeds = claims.llm_settings(config)
    assert len(seeds) >= 16 and [s["seed"] for s in seeds] == list(range(len(seeds)))
    assert all(s["sizes"] == ("tiny",) for s in seeds)
    quick = claims.Config(quick=True)
    assert claims.seed_list(quick) == {} and len(claims.llm_settings(quick)) == 2


def test_search_defaults_are_toy_scalings():
    claims = load_script("experiments/claims.py")
    toy = load_script("experiments/toy_scaling.py")
    defaults = flag_values(toy.Config())
    for key, value in claims.SEARCH_DEFAULTS.items():
        if key not in ("objectives", "capacities", "n_resamples"):
            assert defaults[key] == value, key


# ---------------------------------------------------------------------------------------------
# LLM runs: pooled as seeds only when their configurations differ in the seed alone
# ---------------------------------------------------------------------------------------------


def overopt_run(root, *, lr, seed, peak, objective="dpo"):
    """An llm_overopt-like family (config.json) with one run, tiny/dpo/β 0.1, whose exact win
    rate rises from 0.5 to ``peak`` and falls back to 0.5 (its drop: peak − 0.5)."""
    import json

    from tests.test_figures_scaling import write_llm_run

    family = root / f"family-lr{lr:g}-seed{seed}"
    family.mkdir(parents=True, exist_ok=True)
    (family / "config.json").write_text(json.dumps({"seed": seed, "lr": lr, "betas": [0.1]}))
    run = family / "llm" / f"tiny-{objective}-beta0.1"
    config = {"objective": objective, "beta": 0.1, "model": "tiny", "size": "tiny", "seed": seed,
              "lr": lr, "source": "tree"}  # fmt: skip
    exact = {
        "exact_kl_reverse": [0.0, 1.0, 2.0, 3.0],
        "exact_kl_forward": [0.0, 1.0, 2.0, 3.0],
        "exact_win_rate": [0.5, peak, (peak + 0.5) / 2, 0.5],
        "exact_mass_ood": [0.1, 0.2, 0.3, 0.4],
        "exact_mass_in_dist": [0.9, 0.8, 0.7, 0.6],
    }
    write_llm_run(run, "tiny", objective=objective, seed=seed, config=config, exact=exact)
    return run


def test_llm_runs_that_differ_in_lr_are_two_settings_not_the_mean_as_one_seed(tmp_path):
    from figures import checkpoints

    # issue 23 item 3: lr 3e-3 and 1e-3, both seed 0; the old table printed 0.0363, their mean
    runs = [overopt_run(tmp_path, lr=3e-3, seed=0, peak=0.555),
            overopt_run(tmp_path, lr=1e-3, seed=0, peak=0.5175)]  # fmt: skip
    table = checkpoints.from_llm(runs)
    assert table["config"].nunique() == 2
    rows = catalog.evaluate_checkpoints(table, source="llm", n_resamples=0, only=["3a"])
    assert sorted(rows["value"]) == pytest.approx([0.0175, 0.055])
    by_variant = rows.set_index("variant")["value"]
    assert by_variant["lr=0.003"] == pytest.approx(0.055)
    assert by_variant["lr=0.001"] == pytest.approx(0.0175)
    assert rows["setting"].str.contains(r"variant=\(lr=0.001\)").any()
    note = report.llm_note(table, 2)
    assert "2 settings, 1 seed per setting" in note and "lr=0.001; lr=0.003" in note


def test_llm_runs_that_differ_only_in_seed_are_pooled_as_two_seeds(tmp_path):
    from figures import checkpoints

    runs = [overopt_run(tmp_path, lr=1e-3, seed=0, peak=0.555),
            overopt_run(tmp_path, lr=1e-3, seed=1, peak=0.5175)]  # fmt: skip
    table = checkpoints.from_llm(runs)
    assert set(table["variant"]) == {""} and table["config"].nunique() == 2
    (row,) = catalog.evaluate_checkpoints(table, source="llm", n_resamples=0, only=["3a"]).to_dict(
        "records"
    )
    assert row["value"] == pytest.approx((0.055 + 0.0175) / 2)  # the mean of two seeds
    assert np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"])  # an interval over them
    assert "1 settings, 2 seeds per setting" in report.llm_note(table, 2)


def test_claims_with_a_missing_llm_run_folder_is_an_error_before_any_work(tmp_path):
    # issue 23 item 8: one typo among good folders skipped the whole LLM side and exited 0; now
    # a ValueError (cli.run: exit 2, one line) before any experiment runs
    claims = load_script("experiments/claims.py")
    good = overopt_run(tmp_path, lr=1e-3, seed=0, peak=0.555)
    config = claims.Config(
        out=str(tmp_path / "claims"), results=str(tmp_path / "results"), quick=True,
        llm_runs=(str(good), str(tmp_path / "typo")), progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="is not a folder") as e:
        claims.main(config)
    assert str(tmp_path / "typo") in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "results").exists()  # nothing ran


def test_a_nan_statistic_reads_no_data_not_depends_on_seed():
    row = catalog.make_row("3a", math.nan, math.nan, math.nan, source="llm", size="tiny")
    assert row["verdict"] == rules.NO_DATA
    summary = catalog.summarise(pd.DataFrame([row])).iloc[0]
    assert summary["verdict"] == rules.NO_DATA and summary["depends_on"] == ""
    assert report.verdict_text(summary) == "no data"
    # beside a setting that straddles, the claim depends on the seed, not on "no data"
    straddles = catalog.make_row("3a", 0.02, 0.0, 0.04, source="llm", size="14m")
    summary = catalog.summarise(pd.DataFrame([row, straddles])).iloc[0]
    assert summary["depends_on"] == "seed (the intervals straddle)"


def test_the_per_run_flag_is_shown_beside_its_shuffled_checkpoint_null():
    rng = np.random.default_rng(0)
    steps = np.arange(8)
    hump = 0.5 + 0.1 * np.sin(np.pi * steps / 7) ** 2 * (steps < 7)  # rises, falls at the end
    rows = []
    for run in range(12):
        noise = 0.5 + 0.05 * rng.standard_normal(len(steps))
        for step, h, e in zip(steps, hump, noise, strict=True):
            rows += [{"run": f"hump{run}", "step": step, "win_rate": h + 0.001 * run},
                     {"run": f"noise{run}", "step": step, "win_rate": e}]  # fmt: skip
    table = pd.DataFrame(rows)
    real = catalog.flag_null(table[table["run"].str.startswith("hump")], n_permutations=50)
    assert real["flag_rate"] == 1 and real["null_high"] < 1  # the trajectory makes the flag
    noise = catalog.flag_null(table[table["run"].str.startswith("noise")], n_permutations=50)
    # noise raises the flag about as often as its shuffled copies do: no evidence
    assert noise["null_low"] <= noise["flag_rate"] <= noise["null_high"]
