"""Run folders: atomic writes, config-derived names, clear errors on missing or corrupt files."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from treemdp.runs import (
    atomic_write,
    cached_tables,
    find_runs,
    read_config,
    read_table,
    run_folder,
    write_config,
    write_table,
)


@dataclass(frozen=True)
class Cfg:
    beta: tuple[float, ...] = (0.1,)
    out: str = "x"


def test_folder_name_depends_on_results_fields_only(tmp_path):
    a = run_folder(tmp_path, Cfg(), prefix="p", ignore=("out",))
    assert a == run_folder(tmp_path, Cfg(out="elsewhere"), prefix="p", ignore=("out",))
    assert a != run_folder(tmp_path, Cfg(beta=(0.2,)), prefix="p", ignore=("out",))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.csv"
    write_table(path, pd.DataFrame({"a": [1]}))

    def crash(p):
        p.write_text("half a ta")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert read_table(path)["a"].tolist() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "t.csv"]


def test_tables_round_trip_floats_exactly(tmp_path):
    frame = pd.DataFrame({"x": [0.1 + 0.2, 1 / 3, 1e-300]})
    write_table(tmp_path / "t.csv", frame)
    assert read_table(tmp_path / "t.csv").equals(frame)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist: run the experiment"):
        read_table(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="config.json is missing"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is corrupt"):
        read_config(tmp_path)
    write_table(tmp_path / "t.csv", pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match=r"lacks columns \['b'\]"):
        read_table(tmp_path / "t.csv", columns=("a", "b"))


def test_config_round_trips(tmp_path):
    write_config(tmp_path, Cfg())
    assert read_config(tmp_path) == {"beta": [0.1], "out": "x"}


def test_find_runs_lists_complete_folders_newest_first(tmp_path):
    import os

    for name, stamp in (("a", 100), ("b", 200)):
        write_config(tmp_path / name, Cfg(out=name))
        write_table(tmp_path / name / "t.csv", pd.DataFrame({"a": [1]}))
        os.utime(tmp_path / name / "t.csv", (stamp, stamp))
    write_config(tmp_path / "incomplete", Cfg())
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{")
    write_table(tmp_path / "corrupt" / "t.csv", pd.DataFrame({"a": [1]}))
    found = find_runs(tmp_path, "t.csv")
    assert [f.name for f, _ in found] == ["b", "a"]
    assert found[0][1]["out"] == "b"


def test_cached_tables_compute_once_then_reuse(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"main": pd.DataFrame({"a": [1.5]}), "extra": pd.DataFrame({"b": [2]}), "none": None}

    first, reused = cached_tables(tmp_path, Cfg(), ["main"], compute)
    assert not reused and first["main"]["a"].tolist() == [1.5]
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "main.csv",
        "extra.csv",
        "manifest.json",
    }
    again, reused = cached_tables(tmp_path, Cfg(), ["main"], compute)
    assert reused and again["main"].equals(first["main"]) and len(calls) == 1
    cached_tables(tmp_path, Cfg(), ["main"], compute, force=True)
    assert len(calls) == 2


def test_cached_tables_marker_table_is_written_last(tmp_path):
    order = []
    import treemdp.runs.folders as results

    original = results.write_table
    results.write_table = lambda path, frame: order.append(path.name) or original(path, frame)
    try:
        cached_tables(
            tmp_path,
            Cfg(),
            ["marker", "other"],
            lambda: {"marker": pd.DataFrame({"a": [1]}), "other": pd.DataFrame({"a": [2]})},
        )
    finally:
        results.write_table = original
    assert order == ["other.csv", "marker.csv"]


def test_a_table_rebuilt_from_its_csv_is_written_byte_identically(tmp_path):
    # Rows computed in memory hold None or "" where rows read back from the CSV hold NaN, so the
    # two frames took different writers (pandas with %.17g, or the fast one with repr): the
    # llm_confirm kill harness saw "0" vs "0.0" and 17 digits vs repr in a rebuilt table.
    rows = [
        {"step": 0, "kl": 0, "flag": "", "note": None, "path": "reference"},
        {"step": 2, "kl": 0.39816403742269668, "flag": "", "note": None, "path": "a,b"},
    ]
    for frame in (pd.DataFrame(rows), pd.DataFrame(rows).drop(columns="path")):
        write_table(tmp_path / "a.csv", frame)
        again = pd.read_csv(tmp_path / "a.csv")
        write_table(tmp_path / "b.csv", again)
        assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
        assert again["kl"].tolist() == [0.0, 0.39816403742269668]  # full precision


def test_temporaries_of_this_and_older_versions_are_recognised_and_nothing_else():
    from treemdp.runs import is_temporary, temporary_path

    made = temporary_path(Path("/x/step-0000003"))
    assert is_temporary(made.name) and made.parent == Path("/x")
    older = [".step-0000003.tmp-4242", ".step-0000003.tmp-sharded", ".metrics.csv.k2j3.tmp"]
    assert all(is_temporary(name) for name in older)
    kept = ["step-0000003", "metrics.csv", ".lock", "latest.json", ".step.tmp-x1"]
    assert not any(is_temporary(name) for name in kept)
