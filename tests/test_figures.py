"""Figure scripts: plot() on small synthetic tables, clear load() errors, make_all end to end."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from figures import ood_probs, run_index, tree_mdp
from tests.scripts import run_script
from treemdp.runs import write_table


def synthetic(n_runs_per_cell: int = 2, steps=(0, 10, 20), n_responses: int = 4):
    """Metrics and response tables shaped like ood_mass.py's, with made-up numbers."""
    rows, resp = [], []
    rng = np.random.default_rng(0)
    run = 0
    for objective in ood_probs.OBJECTIVES:
        for beta in ood_probs.BETAS:
            for seed in range(n_runs_per_cell):
                for step in steps:
                    p = rng.dirichlet(np.ones(n_responses))
                    rows.append(
                        {
                            "objective": objective,
                            "beta": beta,
                            "run": run,
                            "seed": seed,
                            "step": step,
                            "mass_ood": p[2:].sum(),
                            "max_ood": p[2:].max(),
                            "p_chosen": p[0],
                            "p_rejected": p[1],
                        }
                    )
                    roles = ["chosen", "rejected"] + ["ood"] * (n_responses - 2)
                    for y in range(n_responses):
                        resp.append(
                            {
                                "run": run,
                                "step": step,
                                "response": y,
                                "logp": np.log(p[y]),
                                "role": roles[y],
                            }
                        )
                run += 1
    return pd.DataFrame(rows), pd.DataFrame(resp)


@pytest.mark.parametrize("objective", ["dpo", "ipo", "slic"])
def test_every_plot_draws_the_synthetic_table(objective):
    metrics, responses = synthetic()
    for fig in (
        ood_probs.plot_ood_summary(metrics, objective),
        ood_probs.plot_ood_per_seed(metrics, objective, 0.01),
        ood_probs.plot_indist(metrics, objective, 0.5),
    ):
        ax = fig.axes[0]
        assert ax.get_title().startswith(objective.upper()) and ax.lines
    fig = ood_probs.plot_trajectories(metrics, responses, run=0)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert "chosen (response 0)" in labels and "rejected (response 1)" in labels


def test_plot_names_a_missing_cell():
    metrics, _ = synthetic()
    with pytest.raises(ValueError, match="no rows for objective 'dpo' at β=0.3"):
        ood_probs.plot_indist(metrics, "dpo", 0.3)


def test_load_names_the_missing_column(tmp_path):
    metrics, responses = synthetic()
    write_table(tmp_path / "metrics.csv", metrics.drop(columns="max_ood"))
    write_table(tmp_path / "responses.csv", responses)
    with pytest.raises(ValueError, match=r"lacks columns \['max_ood'\]"):
        ood_probs.load(tmp_path)


def test_run_index_names_the_command_that_makes_a_missing_run(tmp_path):
    with pytest.raises(ValueError, match="run: python experiments/paper_runs.py --results "):
        run_index.run_folders(tmp_path, "tree")
    index = pd.DataFrame(
        {"family": ["tree", "toy"], "role": ["ood_mass", "toy_scaling"], "quick": [True, False],
         "run": ["r/ood_mass/quick", "r/toy_scaling/paper"]}
    )  # fmt: skip
    write_table(tmp_path / run_index.INDEX, index)
    assert run_index.run_folders(tmp_path, "tree", quick=True) == [Path("r/ood_mass/quick")]
    assert run_index.run_folders(tmp_path, "toy") == [Path("r/toy_scaling/paper")]
    command = f"run: python experiments/paper_runs.py --results {tmp_path} --only tree$"
    with pytest.raises(ValueError, match=command):  # the quick run does not stand in for it
        run_index.run_folders(tmp_path, "tree")


def test_tree_diagram_labels_states_actions_and_the_terminal_state(tmp_path):
    files = tree_mdp.main(tmp_path, branching=3, depth=2)
    assert {f.name for f in files} == {"Tree-MDP.png", "Tree-MDP.pdf", "Tree-MDP.txt"}
    fig = tree_mdp.plot(tree_mdp.load(3, 2))
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"S1", "S13", "s∞", "a0", "a1", "a2"} <= texts


def test_make_all_tree_end_to_end_on_a_tiny_config(tmp_path):
    args = [
        "--only",
        "tree",
        "--quick",
        "--results",
        str(tmp_path / "r"),
        "--out",
        str(tmp_path / "f"),
    ]
    first = run_script("figures/make_all.py", *args)
    assert first.returncode == 0, first.stderr
    names = {p.name for p in (tmp_path / "f").iterdir()}
    for objective in ("dpo", "ipo", "slic"):
        assert f"{objective}-beta-0.1-OOD-probs-summary-1pref.png" in names
        for beta in ("0.01", "0.1", "0.5"):
            assert f"{objective}-beta-{beta}-indist-1pref.pdf" in names
            assert f"{objective}-beta-{beta}-OOD-probs-1pref.txt" in names
    assert {"dpo-beta-0.1-1.png", "dpo-beta-0.1-3.png", "Tree-MDP.png"} <= names
    runs = list((tmp_path / "r" / "ood_mass").iterdir())
    # cached: reuses the experiment's folder; drawn again in this process (--jobs 1) into a
    # second folder, every PNG and PDF is the same bytes (no time in either; any --jobs)
    again = [*args[:-1], str(tmp_path / "f2"), "--jobs", "1"]
    second = run_script("figures/make_all.py", *again)
    assert second.returncode == 0
    assert list((tmp_path / "r" / "ood_mass").iterdir()) == runs
    figures = sorted(p.name for p in (tmp_path / "f").iterdir() if p.suffix in (".png", ".pdf"))
    assert len(figures) == 2 * 25
    for name in figures:
        assert (tmp_path / "f" / name).read_bytes() == (tmp_path / "f2" / name).read_bytes(), name


@pytest.mark.parametrize(
    ("raised", "status", "words"),
    [
        (KeyboardInterrupt(), 130, "interrupted; what was finished is saved"),
        (ValueError("--llm-runs x holds no eval.csv"), 2, "error: --llm-runs x holds no eval.csv"),
    ],
)
def test_make_all_ctrl_c_and_a_value_error_are_one_line_and_the_clis_exit_status(
    tmp_path, monkeypatch, capsys, raised, status, words
):
    # as every CLI that goes through treemdp.runs.cli.run: Ctrl-C (here raised where the work
    # is) exits 130, a ValueError 2, each with one line on stderr and no traceback
    from figures import make_all

    def interrupted(families, request):
        raise raised

    monkeypatch.setattr(make_all, "_make", interrupted)
    with pytest.raises(SystemExit) as exit_:
        make_all.main(["--results", str(tmp_path / "r"), "--out", str(tmp_path / "f")])
    assert exit_.value.code == status and exit_.value.__suppress_context__
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert words in line


def test_make_all_drawing_workers_stop_at_ctrl_c_without_a_traceback_of_their_own():
    # Ctrl-C reaches the whole process group: with Python's handler each --jobs worker printed
    # its own KeyboardInterrupt traceback beside make_all's one line; the default action stops
    # it silently (checked by SIGINT to the group of a real run: exit 130, one line)
    import signal

    from figures import make_all

    with make_all._pool(2) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_DFL


def test_a_figure_saved_twice_is_the_same_bytes(tmp_path):
    # the PDF carries no creation date (style.PDF_METADATA), the PNG no time at all
    from figures import style

    for folder in ("a", "b"):
        fig, (ax,) = style.new_figure(1)
        ax.plot([0, 1], [0, 1], label="x")
        ax.legend()
        style.save_figure(fig, tmp_path / folder / "f.png", pdf=True)
    for suffix in (".png", ".pdf"):
        first = (tmp_path / "a" / f"f{suffix}").read_bytes()
        assert first == (tmp_path / "b" / f"f{suffix}").read_bytes(), suffix
    assert b"CreationDate" not in (tmp_path / "a" / "f.pdf").read_bytes()
