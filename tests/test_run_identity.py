"""treemdp.runs.identity: a run's identity is its whole configuration; runs are pooled as seeds
only when they differ in the seed alone (issue 23, items 2 and 3)."""

import json

from treemdp.runs import identity


def overopt_family(root, seed=0, lr=1e-3, source="tree", runs=(("tiny", "dpo", 0.1),)):
    """An llm_overopt-like family folder: config.json and llm/<size>-<objective>-beta<β>/ runs
    (config.json, eval.json) whose ``model`` is the family's SFT folder."""
    family = root / f"b4-len5-concave-{seed}-{lr:g}-{source}"
    (family / "llm" / "sft-tiny").mkdir(parents=True)
    (family / "llm" / "sft-tiny" / "config.json").write_text(
        json.dumps({"stage": "sft", "model": "tiny", "seed": seed, "lr": 3e-3})
    )
    (family / "config.json").write_text(
        json.dumps({"seed": seed, "lr": lr, "betas": [0.1, 0.3], "objectives": ["dpo"],
                    "sizes": ["tiny"], "checkpoints": 10, "out": str(root), "force": False})
    )  # fmt: skip
    folders = []
    for size, objective, beta in runs:
        run = family / "llm" / f"{size}-{objective}-beta{beta:g}"
        run.mkdir()
        (run / "config.json").write_text(
            json.dumps({"stage": "daa", "objective": objective, "beta": beta, "size": size,
                        "model": str(family / "llm" / "sft-tiny"), "seed": seed, "lr": lr,
                        "source": source})
        )  # fmt: skip
        (run / "eval.json").write_text(
            json.dumps({"settings": {"samples": 64, "seed": seed}, "task": f"t{seed}",
                        "judge": "gold"})
        )  # fmt: skip
        folders.append(run)
    return folders


def test_seed_fields_at_any_depth_are_left_out_of_the_setting_hash():
    a = {"lr": 1e-3, "seed": 0, "eval": {"seed": 0, "tree_reward_seed": 5}, "out": "x"}
    b = {"lr": 1e-3, "seed": 1, "eval": {"seed": 7, "tree_reward_seed": 6}, "out": "y"}
    assert identity.config_hash(a) != identity.config_hash(b)
    assert identity.setting_hash(a) == identity.setting_hash(b)
    assert identity.seeds_of(a) == {"seed": 0, "eval.seed": 0, "eval.tree_reward_seed": 5}
    c = {**a, "lr": 3e-3}  # another lr is another setting, whatever the seeds
    assert identity.setting_hash(c) != identity.setting_hash(a)
    # bookkeeping (where it is written, --force, the device) is not identity
    assert identity.config_hash(a) == identity.config_hash({**a, "out": "z", "device": "cuda"})


def test_runs_of_two_families_that_differ_only_in_seed_are_one_setting(tmp_path):
    (a,) = overopt_family(tmp_path, seed=0)
    (b,) = overopt_family(tmp_path, seed=1)
    ia, ib = identity.run_identity(a), identity.run_identity(b)
    # the family's axes lists are not the run's identity, its other fields are
    assert "betas" not in ia["experiment"] and ia["experiment"]["checkpoints"] == 10
    assert ia["model"]["run"] == "llm/sft-tiny"  # the SFT folder, relative to the family
    assert ia["eval"]["task_seed"] == "t0"  # a tree problem's fingerprint is made by its seed
    table = identity.group_settings({"a": ia, "b": ib})
    assert table.loc["a", "setting"] == table.loc["b", "setting"]
    assert table.loc["a", "config"] != table.loc["b", "config"]
    assert table["n_seeds"].tolist() == [2, 2] and set(table["variant"]) == {""}


def test_settings_that_share_a_label_but_differ_in_lr_are_kept_apart_and_named(tmp_path):
    (a,) = overopt_family(tmp_path, lr=3e-3)
    (b,) = overopt_family(tmp_path, lr=1e-3)
    (c,) = overopt_family(tmp_path, lr=1e-3, seed=1)
    configs = {k: identity.run_identity(p) for k, p in zip("abc", (a, b, c), strict=True)}
    table = identity.group_settings(configs)
    assert table.loc["a", "setting"] != table.loc["b", "setting"]
    assert table["n_seeds"].to_dict() == {"a": 1, "b": 2, "c": 2}
    assert table["differing"].iloc[0] == "lr"  # the family's lr is the run's: named once
    assert table.loc["a", "variant"] == "lr=0.003"
    assert table.loc["b", "variant"] == table.loc["c", "variant"]


def test_tree_and_jsonl_runs_are_different_settings(tmp_path):
    (a,) = overopt_family(tmp_path, source="tree")
    (b,) = overopt_family(tmp_path, source="jsonl")
    table = identity.group_settings({k: identity.run_identity(p) for k, p in (("a", a), ("b", b))})
    assert "source" in table["differing"].iloc[0].split(", ")
    assert table.loc["a", "variant"] != table.loc["b", "variant"]


def test_one_configuration_in_two_folders_is_two_settings_told_apart_by_folder(tmp_path):
    (a,) = overopt_family(tmp_path)
    config = identity.run_identity(a)
    table = identity.group_settings({"a": config, "copy": dict(config)})
    assert table["n_seeds"].tolist() == [1, 1]  # a copy is not a second seed
    assert table["variant"].to_dict() == {"a": "folder=a", "copy": "folder=copy"}
