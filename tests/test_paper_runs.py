"""experiments/paper_runs.py: the paper's runs as data, and the index the figures read."""

from pathlib import Path

import pandas as pd
import pytest

from figures import run_index
from tests.scripts import load_script
from treemdp.runs import read_table, write_table
from treemdp.runs.cli import flag_values

paper_runs = load_script("experiments/paper_runs.py")


def finish(paper_run, results: Path, columns=("step", "length_r2")) -> Path:
    """Write the table that marks ``paper_run``'s folder under ``results`` complete."""
    folder = paper_run.experiment.output_folder(paper_runs.placed(paper_run, results))
    write_table(folder / paper_run.finished, pd.DataFrame({c: [0] for c in columns}))
    return folder


def test_every_family_has_a_paper_and_a_quick_run_whose_config_holds_its_settings():
    runs = paper_runs.declared()
    for family in paper_runs.FAMILIES:
        assert {r.quick for r in runs if r.family == family} == {False, True}, family
    toy = next(r for r in runs if r.family == "toy" and not r.quick)
    values = flag_values(toy.config)
    assert all(values[k] == v for k, v in paper_runs.TOY.items())
    llm = [r.config.sizes for r in runs if r.family == "llm" and not r.quick]
    assert tuple(llm) == tuple((size,) for size in paper_runs.LLM_SIZES)


def test_index_lists_finished_runs_only_and_the_llm_evaluation_folders(tmp_path):
    runs = paper_runs.declared()
    tree, toy = (next(r for r in runs if r.family == f and r.quick) for f in ("tree", "toy"))
    llm = next(r for r in runs if r.family == "llm" and r.quick)
    paper_toy = next(r for r in runs if r.family == "toy" and not r.quick)
    tree_folder = finish(tree, tmp_path)
    finish(toy, tmp_path, columns=("step",))  # written before length_r2 existed: not finished
    toy_folder = finish(paper_toy, tmp_path)
    llm_folder = finish(llm, tmp_path)
    for name in ("sft-tiny", "tiny-dpo-beta0.1", "tiny-rdpo-beta0.1"):
        (llm_folder / "llm" / name).mkdir(parents=True)
    table = paper_runs.index(tmp_path)
    assert list(table.columns) == list(run_index.COLUMNS)
    names = ("tiny-dpo-beta0.1", "tiny-rdpo-beta0.1")  # the SFT folder is not an evaluation
    evaluations = [str(llm_folder / "llm" / name) for name in names]
    assert list(table["run"]) == [str(tree_folder), str(toy_folder), *evaluations]
    assert list(table["role"]) == ["ood_mass", "toy_scaling", "tiny", "tiny"]
    assert list(table["quick"]) == [True, False, True, True]


def test_main_writes_the_index_the_figures_read(tmp_path):
    tree = next(r for r in paper_runs.declared() if r.family == "tree" and r.quick)
    folder = finish(tree, tmp_path)
    path = paper_runs.main(paper_runs.Config(results=str(tmp_path), only=(), quiet=True))
    assert path == tmp_path / run_index.INDEX
    assert read_table(path)["run"].tolist() == [str(folder)]
    assert run_index.run_folders(tmp_path, "tree", quick=True) == [folder]
    with pytest.raises(ValueError, match="--only toy --quick"):
        run_index.run_folders(tmp_path, "toy", quick=True)
