"""Checkpoint-table figures: the table's adapters, every plot() on a synthetic table, clear
errors, and make_all --only toy end to end on the quick config."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from figures import accuracy, checkpoints, evolution, length, make_all, scaling_fits, style
from tests.scripts import run_script
from treemdp.runs import write_table

SIZES = ("small", "large")
BETAS = (0.03, 0.3)


def synthetic_table(objectives=("dpo", "ipo", "slic", "rdpo"), seeds=(0, 1), steps=5):
    """A checkpoint table with made-up but shaped numbers: win rate rises then falls in d."""
    rng = np.random.default_rng(0)
    rows = []
    for rank, size in enumerate(SIZES):
        for objective in objectives:
            for beta in BETAS:
                for seed in seeds:
                    run = f"{size}/{objective}/{beta}/{seed}"
                    for k in range(steps + 1):
                        kl = k * 0.4 / beta**0.5 * (1 + 0.1 * rng.random())
                        d = np.sqrt(kl)
                        rows.append(
                            {
                                "run": run,
                                "objective": objective,
                                "beta": beta,
                                "size": size,
                                "size_rank": rank,
                                "seed": seed,
                                "step": 10 * k,
                                "fraction": k / steps,
                                "final": k == steps,
                                "kl_reverse": kl,
                                "kl_forward": 1.3 * kl,
                                "d": d,
                                "d_forward": np.sqrt(1.3 * kl),
                                "win_rate": 0.5 + d * (0.3 - 0.15 * np.log(d + 1e-12)) * (k > 0),
                                "reward_accuracy": 0.5 + 0.05 * k + 0.01 * rng.random(),
                                "loss": 0.7 - 0.05 * k + 0.01 * rng.random(),
                                "length": 3 + 0.1 * k,
                                "length_r2": np.nan if k == 0 else rng.random(),
                                "win_rate_se": np.nan,
                                "kl_reverse_se": np.nan,
                                "kl_forward_se": np.nan,
                            }
                        )
    return checkpoints.check(pd.DataFrame(rows))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def data(table=None):
    return checkpoints.Data(synthetic_table() if table is None else table, "toy", "data: test")


# ---------------------------------------------------------------------------------------------
# plot() on a synthetic table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["dpo", "ipo", "slic"])
@pytest.mark.parametrize("x", ["d", "d_forward"])
@pytest.mark.parametrize("final", [True, False])
def test_scaling_fit_plot_draws_a_curve_per_size(objective, x, final):
    table = synthetic_table()
    fig = scaling_fits.plot(table, objective, x=x, final=final)
    ax = fig.axes[0]
    assert ax.get_title().startswith(objective.upper()[:3].replace("SLI", "SLi"))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lab.split()[0] for lab in labels] == list(SIZES)
    curves = [line for line in ax.lines if len(line.get_xdata()) == 200]
    assert len(curves) == len(SIZES)
    assert "forward" in ax.get_xlabel() if x == "d_forward" else "forward" not in ax.get_xlabel()


def test_scaling_fit_is_to_the_gain_over_step_zero_and_recovers_the_form():
    # The synthetic win rate is exactly 0.5 + d(0.3 − 0.15 log d) for k > 0 (and 0.5 at d = 0).
    fits = scaling_fits.fit_sizes(synthetic_table(), "dpo", "d", final=False)
    np.testing.assert_allclose(fits["alpha"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(fits["beta"], 0.15, rtol=1e-6)
    np.testing.assert_allclose(fits["initial"], 0.5)
    assert not fits["offset_fit"].any()


def test_scaling_fit_without_step_zero_uses_a_free_offset():
    table = synthetic_table()
    fits = scaling_fits.fit_sizes(table[table["step"] > 0], "dpo", "d", final=False)
    assert fits["offset_fit"].all()
    np.testing.assert_allclose(fits["initial"], 0.5, atol=1e-6)  # the offset is recovered


@pytest.mark.parametrize("metric", ["win_rate", "kl_reverse"])
def test_evolution_plot_one_line_per_beta(metric):
    fig = evolution.plot(synthetic_table(), "slic", "large", metric)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["0.03", "0.3", "band: ±1 SE of the mean over 2 seeds"]
    assert (
        ax.get_xlabel() == "epochs (passes over the preference data)" and "SLiC" in ax.get_title()
    )
    assert len(ax.collections) == len(BETAS) + 1  # one ±SE band per β (two seeds) + legend's


def test_evolution_band_is_the_runs_own_standard_error_with_one_seed():
    table = synthetic_table(seeds=(0,)).assign(win_rate_se=0.02)
    fig = evolution.plot(table, "dpo", "small", "win_rate")
    assert "one seed" in fig.axes[0].get_title()
    assert len(fig.axes[0].collections) == len(BETAS) + 1  # + the legend's band entry
    assert "band: ±1 SE of the run's estimate" in [
        t.get_text() for t in fig.axes[0].get_legend().get_texts()
    ]


def test_evolution_of_exact_values_has_no_band():  # SE 0: a tree-language run's exact values
    table = synthetic_table(seeds=(0,)).assign(win_rate_se=0.0)
    fig = evolution.plot(table, "dpo", "small", "win_rate")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert not fig.axes[0].collections and not any("band" in t for t in legend)


def test_beta_and_size_colours_are_the_same_in_every_figure():
    table = synthetic_table()
    from figures.common import beta_colors, size_colors

    assert beta_colors(table) == beta_colors(table[table["objective"] == "ipo"].iloc[::-1])
    assert list(size_colors(table)) == list(SIZES)


def test_length_plots():
    table = synthetic_table()
    assert length.middle_size(table) == "large"
    fig = length.plot_dpo_rdpo(table, "small")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["DPO", "R-DPO"] and "small" in fig.axes[0].get_title()
    fig = length.plot_kl_length_corr(table)
    assert [ax.get_title() for ax in fig.axes] == ["DPO", "IPO", "SLiC"]
    assert fig.axes[0].get_xscale() == "log"


def test_length_plots_name_what_is_missing():
    table = synthetic_table(objectives=("dpo", "ipo"))
    with pytest.raises(ValueError, match="both dpo and rdpo.*--objectives dpo rdpo"):
        length.middle_size(table)
    with pytest.raises(ValueError, match="no length_r2 values"):
        length.plot_kl_length_corr(table.assign(length_r2=np.nan))


@pytest.mark.parametrize("metric", ["reward_accuracy", "loss"])
def test_accuracy_plot_one_panel_per_size_with_spearman(metric):
    table = synthetic_table()
    fig = accuracy.plot(table, "ipo", metric)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split()[0] for t in titles] == list(SIZES)
    for size, text in zip(SIZES, titles, strict=True):
        pts = table[(table["objective"] == "ipo") & (table["size"] == size) & (table["step"] > 0)]
        if metric == "reward_accuracy":  # one scale for every β: pooled
            rho = spearmanr(pts["win_rate"], pts[metric]).statistic  # step 0 is left out
            assert f"Spearman ρ = {rho:.2f}" in text
        else:  # the loss's scale changes with β: within each β, never pooled
            per_beta = [
                spearmanr(g["win_rate"], g["loss"]).statistic for _, g in pts.groupby("beta")
            ]
            assert f"ρ within β: mean {np.mean(per_beta):.2f}" in text
            pooled = spearmanr(pts["win_rate"], pts["loss"]).statistic
            assert f"ρ = {pooled:.2f}" not in text


def test_loss_correlation_is_per_beta_when_scales_differ():
    # Within each β the loss falls as the win rate rises (ρ = −1), but the β with the larger
    # loss scale has the higher win rates: pooled, ρ would be positive. The title must say −1.
    rows = []
    for beta, scale, base in ((0.03, 1000.0, 0.8), (0.3, 1.0, 0.5)):
        for k in range(1, 6):
            rows.append({"beta": beta, "win_rate": base + 0.01 * k, "loss": scale * (6 - k)})
    pts = pd.DataFrame(rows)
    assert spearmanr(pts["win_rate"], pts["loss"]).statistic > 0  # the pooled trap
    table = synthetic_table(objectives=("ipo",), seeds=(0,), steps=5)
    table = table[(table["size"] == "small") & (table["step"] > 0)].reset_index(drop=True)
    table[["beta", "win_rate", "loss"]] = pts[["beta", "win_rate", "loss"]].to_numpy()
    fig = accuracy.plot(table, "ipo", "loss")
    assert "ρ within β: mean -1.00" in fig.axes[0].get_title()


def test_select_names_the_missing_cell():
    with pytest.raises(ValueError, match="no rows for objective 'ipo', size 'huge'"):
        evolution.plot(synthetic_table(), "ipo", "huge")


def test_family_mains_write_png_pdf_and_caption(tmp_path):
    d = data(synthetic_table(objectives=("dpo", "rdpo")))
    files = [*scaling_fits.main(d, tmp_path), *evolution.main(d, tmp_path)]
    files += [*length.main(d, tmp_path), *accuracy.main(d, tmp_path)]
    names = {f.name for f in files}
    assert "dpo_scaling_law_curve_fits_final_forward_kl.png" in names
    assert "Winrate_evolution_over_epoch_for_DPO_large.pdf" in names
    assert "KL_evolution_over_epoch_for_DPO_small.txt" in names
    assert {"dpo_rdpo.png", "kl_length_corr.png", "dpo_all_ckpts_loss_vs_win.png"} <= names
    assert not any(n.startswith("rdpo") for n in names)  # R-DPO appears in dpo_rdpo only
    assert all(f.parent == tmp_path / "toy" for f in files)
    caption = (tmp_path / "toy" / "dpo_scaling_law_curve_fits_kl.txt").read_text()
    assert "gain over the run's step-0 value" in caption and "data: test" in caption


# ---------------------------------------------------------------------------------------------
# The adapters and their errors
# ---------------------------------------------------------------------------------------------


def toy_metrics():
    """A toy_scaling metrics.csv: two capacities, the larger listed first."""
    rows = []
    for capacity, n_params in (("mlp16", 161), ("tabular", 93)):
        for run, beta in enumerate(BETAS):
            for step in (0, 5, 10):
                rows.append(
                    {
                        "capacity": capacity,
                        "n_params": n_params,
                        "run": run,
                        "objective": "dpo",
                        "beta": beta,
                        "lr": 0.03,
                        "seed": 0,
                        "step": step,
                        "epoch": 0,
                        "fraction_of_epoch": step / 10,
                        "kl_reverse": step / 10,
                        "kl_forward": step / 5,
                        "d": np.sqrt(step / 10),
                        "d_forward": np.sqrt(step / 5),
                        "win_rate": 0.5 + step / 100,
                        "reward_accuracy": 0.6,
                        "loss": 0.6,
                        "length": 3.0,
                        "length_r2": np.nan if step == 0 else 0.2,
                    }
                )
    return pd.DataFrame(rows)


def test_from_toy_maps_columns_ranks_sizes_and_marks_final(tmp_path):
    write_table(tmp_path / "metrics.csv", toy_metrics())
    table = checkpoints.from_toy(tmp_path)
    assert list(table.columns) == list(checkpoints.COLUMNS)
    ranks = table.drop_duplicates("size").set_index("size")["size_rank"].to_dict()
    assert ranks == {"tabular": 0, "mlp16": 1}  # by n_params, not by order of appearance
    assert table.groupby("run")["final"].sum().eq(1).all()
    assert table.loc[table["final"], "step"].eq(10).all()
    np.testing.assert_allclose(table["d"] ** 2, table["kl_reverse"])
    assert table["run"].nunique() == 4  # run ids are per capacity in the toy: made unique


def test_from_toy_names_the_missing_column_and_the_experiment(tmp_path):
    write_table(tmp_path / "metrics.csv", toy_metrics().drop(columns="length_r2"))
    with pytest.raises(ValueError, match=r"lacks columns \['length_r2'\].*toy_scaling.py --force"):
        checkpoints.from_toy(tmp_path)
    with pytest.raises(ValueError, match="does not exist.*experiments/toy_scaling.py"):
        checkpoints.from_toy(tmp_path / "nothing")


def write_llm_run(
    folder, model, objective="dpo", beta=0.1, seed=0, drop=None, config=None, exact=None
):
    folder.mkdir(parents=True)
    n = 4
    frame = pd.DataFrame(
        {
            "checkpoint": [f"step-{i}" for i in range(n)],
            "examples_seen": [i * 19968 for i in range(n)],
            "fraction_of_epoch": [i / (n - 1) for i in range(n)],
            "kl_reverse": [0.0, 2.0, 5.0, -0.01 + 9.0],
            "kl_reverse_se": 0.1,
            "kl_forward": [0.0, 1.0, 3.0, 6.0],
            "kl_forward_se": 0.1,
            "length_mean": [50.0, 55, 60, 70],
            "logratio_length_r2": [np.nan, 0.1, 0.2, 0.3],
            "reward_accuracy": [0.5, 0.6, 0.65, 0.7],
            "loss": [0.69, 0.6, 0.55, 0.5],
            "win_rate": [0.4, 0.5, 0.55, 0.5],
            "win_rate_se": 0.03,
        }
    )
    for name, values in (exact or {}).items():  # a tree-language run's exact columns
        frame[name] = values
    write_table(folder / "eval.csv", frame.drop(columns=drop or []))
    cfg = {"objective": objective, "beta": beta, "model": model, "seed": seed}
    (folder / "config.json").write_text(json.dumps(config if config is not None else cfg))


def test_from_llm_reads_run_folders_and_orders_models_by_size(tmp_path):
    write_llm_run(tmp_path / "runs" / "a", "pythia-2.8b")
    write_llm_run(tmp_path / "runs" / "b", "pythia-1b", objective="IPO", beta=0.5)
    write_llm_run(tmp_path / "c", "pythia-160m")
    table = checkpoints.from_llm([tmp_path / "runs", tmp_path / "c"])  # a parent and a run
    assert list(table.columns) == list(checkpoints.COLUMNS)
    order = table.drop_duplicates("size").sort_values("size_rank")["size"].tolist()
    assert order == ["pythia-160m", "pythia-1b", "pythia-2.8b"]
    assert set(table["objective"]) == {"dpo", "ipo"}
    assert table.loc[table["final"], "step"].eq(3 * 19968).all()
    assert (table["d"] >= 0).all()  # a slightly negative KL estimate is clipped, not NaN
    np.testing.assert_allclose(table["win_rate_se"], 0.03)
    d = checkpoints.load_llm([tmp_path / "runs"])
    assert d.kind == "llm" and "pythia-1b < pythia-2.8b" in d.source
    assert "estimated on sampled responses" in d.source


def test_llm_runs_with_exact_columns_are_drawn_from_them_and_say_so(tmp_path):
    exact = {"exact_kl_reverse": [0.0, 1.0, 2.0, 3.0], "exact_kl_forward": [0.0, 0.5, 1.0, 1.5],
             "exact_win_rate": [0.5, 0.7, 0.8, 0.6]}  # fmt: skip
    write_llm_run(tmp_path / "a", "tiny", exact=exact)
    table = checkpoints.from_llm(tmp_path / "a")
    np.testing.assert_array_equal(table["win_rate"], exact["exact_win_rate"])
    np.testing.assert_array_equal(table["kl_reverse"], exact["exact_kl_reverse"])
    assert (table["win_rate_se"] == 0).all()
    assert "KL and win rate exact" in checkpoints.load_llm([tmp_path / "a"]).source
    write_llm_run(tmp_path / "b", "tiny", exact={**exact, "exact_win_rate": [0.5, np.nan, 1, 1]})
    partial = checkpoints.from_llm(tmp_path / "b")  # a missing exact value: the sampled columns
    np.testing.assert_array_equal(partial["win_rate"], [0.4, 0.5, 0.55, 0.5])
    mixed = checkpoints.load_llm([tmp_path / "a", tmp_path / "b"]).source
    assert "exact in 1 of 2 runs" in mixed


@pytest.mark.parametrize(
    "setup, message",
    [
        (dict(drop=["logratio_length_r2"]), r"eval.csv lacks columns \['logratio_length_r2'\]"),
        (
            dict(config={"objective": "dpo", "beta": 0.1}),
            r"config.json lacks keys \['model', 'seed'\]",
        ),
    ],
)
def test_from_llm_names_the_missing_column_or_key(tmp_path, setup, message):
    write_llm_run(tmp_path / "r", "pythia-1b", **setup)
    with pytest.raises(ValueError, match=message):
        checkpoints.from_llm(tmp_path / "r")


def test_from_llm_says_what_a_run_folder_needs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no eval.csv.*win_rate_se.*config.json"):
        checkpoints.from_llm(tmp_path / "empty")


def test_llm_tables_draw_every_family(tmp_path):
    for i, (model, objective) in enumerate([("1b", "dpo"), ("2.8b", "dpo"), ("2.8b", "rdpo")]):
        write_llm_run(tmp_path / "runs" / f"r{i}", model, objective=objective)
        write_llm_run(tmp_path / "runs" / f"s{i}", model, objective=objective, beta=0.3)
    d = checkpoints.load_llm([tmp_path / "runs"])
    files = [*scaling_fits.main(d, tmp_path / "out"), *length.main(d, tmp_path / "out")]
    files += evolution.main(d, tmp_path / "out") + accuracy.main(d, tmp_path / "out")
    names = {f.name for f in files}
    assert {"dpo_rdpo.png", "Winrate_evolution_over_epoch_for_DPO_2.8B.png"} <= names
    assert all(f.parent == tmp_path / "out" / "llm" for f in files)


PAPER_SIZE_NAMES = {
    f"{metric}_evolution_over_epoch_for_{obj}_{size}"
    for metric in ("Winrate", "KL")
    for obj in ("DPO", "IPO", "SLiC")
    for size in ("1B", "2.8B", "6.9B")
}
"""The paper's 18 size-named LLM figure names."""
PAPER_SIZE_SUFFIXES = ("_1B", "_2.8B", "_6.9B")


def paper_sized(names) -> set[str]:
    """The names (without extension) that carry one of the paper's model sizes."""
    stems = {n.rsplit(".", 1)[0] for n in names}
    return {s for s in stems if s.endswith(PAPER_SIZE_SUFFIXES) or "_1B_" in s}


@pytest.fixture
def names_only(monkeypatch):
    """Every figure is built (each family's plot() runs in full) but not rendered to PNG/PDF:
    the naming tests below read the file names ``save_figure`` returns. Rendering is what
    costs (about 90% of a family's main) and is checked by the tests that draw every family
    (test_family_mains_write_png_pdf_and_caption, test_llm_tables_draw_every_family, make_all
    end to end)."""

    def named(fig, path, *, pdf=False):
        plt.close(fig)
        path = Path(path)
        return [path, path.with_suffix(".pdf")] if pdf else [path]

    monkeypatch.setattr(style, "save_figure", named)


@pytest.mark.parametrize(
    "models",
    [("1b", "2.8b", "6.9b"), ("EleutherAI/pythia-1b", "pythia-2.8b", "EleutherAI/pythia-6.9b")],
)
def test_pythia_shaped_runs_get_exactly_the_papers_size_names(tmp_path, models, names_only):
    for model in models:
        for objective in ("dpo", "ipo", "slic"):
            for beta in (0.1, 0.3):
                folder = tmp_path / "runs" / f"{model.replace('/', '-')}-{objective}-{beta}"
                write_llm_run(folder, model, objective=objective, beta=beta)
    d = checkpoints.load_llm([tmp_path / "runs"])
    files = evolution.main(d, tmp_path / "out")
    assert paper_sized(f.name for f in files) == PAPER_SIZE_NAMES
    assert {f.name.rsplit(".", 1)[0] for f in files} == PAPER_SIZE_NAMES


def test_models_of_other_sizes_never_get_a_paper_size_name(tmp_path, names_only):
    # "1b-ish", "pythia-1.4b", "12b": near misses that are not the paper's shapes.
    for model in ("tiny", "14m", "31m", "pythia-160m", "1b-ish", "pythia-1.4b", "12b"):
        write_llm_run(tmp_path / "runs" / model, model)
        write_llm_run(tmp_path / "runs" / f"{model}-rdpo", model, objective="rdpo")
    d = checkpoints.load_llm([tmp_path / "runs"])
    files = [*scaling_fits.main(d, tmp_path / "out"), *length.main(d, tmp_path / "out")]
    files += evolution.main(d, tmp_path / "out") + accuracy.main(d, tmp_path / "out")
    names = {f.name for f in files}
    assert not paper_sized(names)
    assert {"Winrate_evolution_over_epoch_for_DPO_14m.png",
            "KL_evolution_over_epoch_for_DPO_pythia-1.4b.pdf",
            "Winrate_evolution_over_epoch_for_DPO_1b-ish.png"} <= names  # fmt: skip


# ---------------------------------------------------------------------------------------------
# make_all end to end
# ---------------------------------------------------------------------------------------------


def test_make_all_toy_and_llm_end_to_end_on_the_quick_config(tmp_path, capfd):
    args = ["--only", "toy", "llm", "--quick"]
    args += ["--results", str(tmp_path / "r"), "--out", str(tmp_path / "f")]
    first = run_script("figures/make_all.py", *args, "--fresh")
    assert first.returncode == 0, first.stderr
    # tiny models are never labelled with a paper size (no _1B / _2.8B / _6.9B file)
    assert not paper_sized(p.name for p in (tmp_path / "f").rglob("*"))
    assert "training and evaluating the tiny model" in first.stdout  # the default LLM runs
    llm_names = {p.name for p in (tmp_path / "f" / "llm").iterdir()}
    # the stop tree's responses have several lengths: R-DPO and the length figures are drawn
    assert {
        "dpo_scaling_law_curve_fits_kl.png",
        "Winrate_evolution_over_epoch_for_DPO_tiny.png",
        "dpo_all_ckpts_acc_vs_win.png",
        "dpo_rdpo.png",
        "kl_length_corr.png",
    } <= llm_names
    names = {p.name for p in (tmp_path / "f" / "toy").iterdir()}
    for objective in ("dpo", "ipo", "slic"):
        for part in ("final_kl", "kl", "final_forward_kl", "forward_kl"):
            assert f"{objective}_scaling_law_curve_fits_{part}.png" in names
        assert f"{objective}_all_ckpts_acc_vs_win.png" in names
        assert f"{objective}_all_ckpts_loss_vs_win.txt" in names
    for obj in ("DPO", "IPO", "SLiC"):
        for size in ("tabular", "mlp4"):
            assert f"Winrate_evolution_over_epoch_for_{obj}_{size}.png" in names
            assert f"KL_evolution_over_epoch_for_{obj}_{size}.pdf" in names
    assert {"dpo_rdpo.png", "kl_length_corr.png"} <= names
    caption = (tmp_path / "f" / "toy" / "dpo_rdpo.txt").read_text()
    assert "toy_scaling.py" in caption and "capacity" in caption
    runs = sorted((tmp_path / "r" / "toy_scaling").iterdir())
    assert len(runs) == 1
    # cached: make_all's data step without --fresh runs no experiment again (only the data step:
    # drawing the same tables a second time would repeat what the first call checked)
    request = make_all.Request(tmp_path / "r", tmp_path / "f2", False, True, ())
    make_all.make_runs(request, ["toy", "llm"])
    assert "training and evaluating" not in capfd.readouterr().out
    assert sorted((tmp_path / "r" / "toy_scaling").iterdir()) == runs


def test_make_all_llm_failure_names_the_problem(tmp_path):
    (tmp_path / "bad").mkdir()
    args = ["--only", "llm", "--llm-runs", str(tmp_path / "bad"), "--out", str(tmp_path / "f")]
    done = run_script("figures/make_all.py", *args)
    assert done.returncode != 0
    assert "[llm] failed" in done.stderr and "holds no eval.csv" in done.stderr


def test_the_llm_table_contract_matches_what_the_evaluation_writes():
    from treemdp.runs.eval_table import COLUMNS

    assert tuple(COLUMNS[: len(checkpoints.LLM_EVAL_COLUMNS)]) == checkpoints.LLM_EVAL_COLUMNS


def test_scaling_fit_reports_no_peak_beyond_the_data_and_draws_only_over_the_data():
    # Synthetic win rate 0.5 + d(0.3 − 0.15 log d): d* = exp(0.3/0.15 − 1) = e ≈ 2.72.
    # All steps: d reaches ~3.4 > e, so the peak is inside; steps ≤ 2: d ≤ ~2.3 < e, outside.
    full = synthetic_table(objectives=("dpo",))
    early = full[full["step"] <= 20].copy()
    early["final"] = early["step"] == 20
    inside = scaling_fits.fit_sizes(full, "dpo", "d")
    outside = scaling_fits.fit_sizes(early, "dpo", "d")
    np.testing.assert_allclose(inside["peak_d"], np.e, rtol=1e-6)
    assert inside["peak_in_data"].all() and (inside["d_max"] > np.e).all()
    assert not outside["peak_in_data"].any() and (outside["d_max"] < np.e).all()
    for table, inside_data in ((full, True), (early, False)):
        ax = scaling_fits.plot(table, "dpo").axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        if inside_data:
            assert all(lab.endswith("(d*=2.7)") for lab in labels)
        else:
            assert all(lab.endswith("(d*=2.7 beyond the data)") for lab in labels)
        curves = [line for line in ax.lines if len(line.get_xdata()) == scaling_fits.CURVE_POINTS]
        assert len(curves) == len(SIZES)
        assert max(c.get_xdata().max() for c in curves) <= table["d"].max() + 1e-12
    caption = scaling_fits.describe_fits(early, "dpo", "d", False)
    assert caption.count("PEAK OUTSIDE THE DATA") == len(SIZES)


def peak_before_the_data() -> pd.DataFrame:
    """A checkpoint table whose points all lie at d in [1.5, 3] on win rate 0.5 + d(0.1 −
    0.2 log d) (exact), without step 0: the RL fit's peak d* = exp(0.1/0.2 − 1) ≈ 0.61 lies
    before every point (the llm family's humps of issue 14)."""
    rows = []
    for run, beta in enumerate((0.03, 0.1, 0.3)):
        for step, d in enumerate(np.linspace(1.5, 3.0, 5) + 0.1 * run):
            win = 0.5 + d * (0.1 - 0.2 * np.log(d))
            rows.append({"run": f"r{run}", "objective": "dpo", "beta": beta, "size": "tiny",
                         "size_rank": 0, "seed": 0, "step": step + 1, "fraction": (step + 1) / 5,
                         "final": step == 4, "kl_reverse": d**2, "kl_forward": d**2, "d": d,
                         "d_forward": d, "win_rate": win, "reward_accuracy": 0.5, "loss": 0.6,
                         "length": 3.0, "length_r2": 0.1, "win_rate_se": np.nan,
                         "kl_reverse_se": np.nan, "kl_forward_se": np.nan})  # fmt: skip
    return checkpoints.check(pd.DataFrame(rows))


def test_a_peak_before_every_point_is_flagged_in_the_figure_the_caption_and_the_table(tmp_path):
    table = peak_before_the_data()
    fits = scaling_fits.fit_sizes(table, "dpo", "d")
    (f,) = fits.itertuples()
    assert f.peak_d < f.d_min  # before every point
    np.testing.assert_allclose(f.peak_d, np.exp(0.1 / 0.2 - 1), rtol=1e-4)
    assert not f.peak_in_data
    ax = scaling_fits.plot(table, "dpo", fits=fits).axes[0]
    (label,) = [t.get_text() for t in ax.get_legend().get_texts()]
    assert label == "tiny  (d*=0.61 before the data)"
    (curve,) = [line for line in ax.lines if len(line.get_xdata()) == scaling_fits.CURVE_POINTS]
    xs = curve.get_xdata()
    assert xs.min() == pytest.approx(table["d"].min()) and xs.max() == pytest.approx(
        table["d"].max()
    )  # the hump before the data is not drawn
    data = checkpoints.Data(table, "llm", "synthetic")
    files = scaling_fits.main(data, tmp_path)
    written = pd.read_csv(tmp_path / "llm" / scaling_fits.FITS_TABLE)
    assert tmp_path / "llm" / scaling_fits.FITS_TABLE in files
    assert len(written) == 4 and not written["peak_in_data"].any()
    every = written[~written["final"]]  # the final checkpoints alone are too few to fit
    assert len(every) == 2 and (every["peak_d"] < every["d_min"]).all()
    caption = (tmp_path / "llm" / "dpo_scaling_law_curve_fits_kl.txt").read_text()
    assert "PEAK OUTSIDE THE DATA" in caption


def test_the_fits_table_marks_a_peak_inside_the_data(tmp_path):
    data = checkpoints.Data(synthetic_table(objectives=("dpo",)), "toy", "synthetic")
    scaling_fits.main(data, tmp_path)
    written = pd.read_csv(tmp_path / "toy" / scaling_fits.FITS_TABLE)
    rows = written[(written["d_axis"] == "d") & ~written["final"]]
    assert rows["peak_in_data"].all() and len(rows) == len(SIZES)
    assert ((rows["d_min"] <= rows["peak_d"]) & (rows["peak_d"] <= rows["d_max"])).all()


def test_dpo_rdpo_x_axis_is_root_kl():
    table = synthetic_table(objectives=("dpo", "rdpo"))
    fig = length.plot_dpo_rdpo(table, "large")
    assert all(ax.get_xlabel().startswith("d = √KL") for ax in fig.axes)
    sub = table[(table["size"] == "large") & table["objective"].isin(["dpo", "rdpo"])]
    xs = np.concatenate([c.get_offsets()[:, 0] for c in fig.axes[0].collections])
    np.testing.assert_allclose(np.sort(xs), np.sort(sub["d"].to_numpy()))


# ---------------------------------------------------------------------------------------------
# Run identity: settings that differ in more than the seed are never one curve (issue 23)
# ---------------------------------------------------------------------------------------------


def write_family_run(root, *, lr=1e-3, seed=0, source="tree", judge="gold", win=None):
    """tiny/dpo/β 0.1 of an llm_overopt-like family (config.json two levels up, eval.json)."""
    family = root / f"family-{lr:g}-{seed}-{source}"
    family.mkdir(parents=True)
    (family / "config.json").write_text(json.dumps({"seed": seed, "lr": lr}))
    run = family / "llm" / "tiny-dpo-beta0.1"
    config = {"objective": "dpo", "beta": 0.1, "model": "tiny", "size": "tiny", "seed": seed,
              "lr": lr, "source": source}  # fmt: skip
    write_llm_run(run, "tiny", seed=seed, config=config)
    (run / "eval.json").write_text(json.dumps({"settings": {"seed": 0}, "judge": judge}))
    if win is not None:
        frame = pd.read_csv(run / "eval.csv")
        frame["win_rate"] = win
        write_table(run / "eval.csv", frame)
    return run


def captions(files) -> dict[str, str]:
    return {str(f): f.read_text() for f in files if f.suffix == ".txt"}


def test_llm_runs_of_two_lrs_are_drawn_apart_and_captions_give_the_real_count(tmp_path, names_only):
    # issue 23 item 2: runs sharing size, objective, β and seed but not lr (or a tree and a JSONL
    # run) were one curve, its legend "mean over 2 seeds" under a title "one seed"
    runs = [write_family_run(tmp_path, lr=3e-3), write_family_run(tmp_path, lr=1e-3),
            write_family_run(tmp_path, lr=1e-3, source="jsonl")]  # fmt: skip
    d = checkpoints.load_llm(runs)
    parts = checkpoints.by_variant(d)
    assert len(parts) == 3 and all(len(p.table["run"].unique()) == 1 for p in parts)
    assert {p.kind for p in parts} == {
        "llm/lr=0.003_source=tree",
        "llm/lr=0.001_source=tree",
        "llm/lr=0.001_source=jsonl",
    }
    files = [f for p in parts for f in evolution.main(p, tmp_path / "out")]
    texts = captions(files)
    assert len(texts) == 6 and all("one seed" in t and "Setting lr=" in t for t in texts.values())
    fig = evolution.plot(parts[0].table, "dpo", "tiny")
    assert "(one seed)" in fig.axes[0].get_title()
    assert not any("seeds" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_llm_runs_that_differ_only_in_seed_are_one_curve_of_two_seeds(tmp_path, names_only):
    runs = [write_family_run(tmp_path, seed=0), write_family_run(tmp_path, seed=1)]
    d = checkpoints.load_llm(runs)
    assert len(checkpoints.by_variant(d)) == 1 and "2 seeds per setting" in d.source
    fig = evolution.plot(d.table, "dpo", "tiny")
    assert "(mean of 2 seeds ± 1 SE)" in fig.axes[0].get_title()
    (text,) = [t for k, t in captions(evolution.main(d, tmp_path / "out")).items() if "Win" in k]
    assert "mean of 2 seeds" in text


def test_figures_of_runs_judged_none_say_they_have_no_win_rate(tmp_path, names_only, capfd):
    # issue 23 item 13: runs evaluated with judge none (win rate NaN) gave empty silent figures
    runs = [write_family_run(tmp_path, judge="none", win=np.nan)]
    d = checkpoints.load_llm(runs)
    assert "NO WIN RATE" in d.source and "judge 'none'" in d.source
    fig = evolution.plot(d.table, "dpo", "tiny")
    assert any("no win rate" in t.get_text() for t in fig.axes[0].texts)
    fig = scaling_fits.plot(d.table, "dpo")
    assert any("no win rate" in t.get_text() for t in fig.axes[0].texts)
    make_all.draw_checkpoints(d, tmp_path / "out")
    assert "NO WIN RATE" in capfd.readouterr().err
    texts = captions(evolution.main(d, tmp_path / "out"))
    assert all("NO WIN RATE" in t for t in texts.values())


def test_make_all_with_out_an_existing_file_is_one_line_exit_2(tmp_path, capsys):
    # issue 23 item 12: a FileExistsError traceback
    out = tmp_path / "a-file"
    out.write_text("x")
    with pytest.raises(SystemExit) as e:
        make_all.main(["--only", "tree", "--out", str(out), "--results", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--out {out} is a file, not a folder" in err
    assert not (tmp_path / "r").exists()
