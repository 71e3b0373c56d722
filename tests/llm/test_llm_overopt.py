"""experiments/llm_overopt.py and what it adds to llm/: exact scoring on a tree with a stop action
(leaves at several depths), R-DPO's lengths, one epoch with checkpoints inside it, and the
in-memory evaluation (--no-keep-weights) that gives the rows a kept checkpoint gives."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from llm.checkpoint import checkpoint_folders
from llm.confirm import DAARun, daa_llm, sft_llm
from llm.data import collate_pairs
from llm.evaluate import TreeTask
from llm.losses import DAALoss
from llm.model import build_model
from llm.sampling import tree_full_logprobs, tree_logprobs
from llm.tree_language import TreeLanguage
from tests.llm.helpers_llm import perturbed
from tests.scripts import load_script
from treemdp.data import sampled_bt_pairs
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import read_table
from treemdp.runs.eval_table import DIGEST
from treemdp.tree import Tree

overopt = load_script("experiments/llm_overopt.py")
paper_runs = load_script("experiments/paper_runs.py")


@pytest.fixture(scope="module")
def stop_tree() -> Tree:
    tree = Tree.with_stop(3, 3, n_prompts=2)  # responses of 1, 2 and 3 tokens, two prompts
    assert len(set(tree.response_length.tolist())) == 3
    return tree


def _brute_force(model, tree: Tree, *, full: bool) -> torch.Tensor:
    """log π(y|x) of every leaf, one forward per prefix of each response: the softmax over the
    action tokens (``full``: over the whole vocabulary) at each step, summed."""
    language = TreeLanguage(tree)
    out = torch.empty(tree.n_responses, dtype=torch.float64)
    with torch.no_grad():
        for leaf in range(tree.n_responses):
            ids = [*language.prompt(int(tree.leaf_prompt[leaf])), *language.response(leaf)]
            total = 0.0
            for t in range(1, len(ids)):
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
                if full:
                    total += float(torch.log_softmax(logits, -1)[ids[t]])
                else:
                    actions = logits[language.actions]
                    total += float(torch.log_softmax(actions, -1)[ids[t] - language.first_action])
            out[leaf] = total
    return out


def test_exact_scoring_of_a_stop_tree_equals_brute_force_enumeration(stop_tree):
    language = TreeLanguage(stop_tree)
    model = perturbed(build_model("tiny", seed=0, vocab_size=language.vocab_size), scale=0.5)
    exact = tree_logprobs(model, stop_tree)
    torch.testing.assert_close(exact, _brute_force(model, stop_tree, full=False), atol=1e-5, rtol=0)
    for k in range(stop_tree.n_prompts):  # a distribution over each prompt's leaves, all depths
        mass = torch.exp(exact[stop_tree.leaf_prompt == k]).sum()
        assert float(mass) == pytest.approx(1.0, abs=1e-9)
    full = tree_full_logprobs(model, stop_tree)
    torch.testing.assert_close(full, _brute_force(model, stop_tree, full=True), atol=1e-5, rtol=0)
    # every leaf decodes back from its tokens, a stopped prefix is a leaf of its own
    for leaf in range(stop_tree.n_responses):
        ids = (*language.prompt(int(stop_tree.leaf_prompt[leaf])), *language.response(leaf))
        assert language.decode(ids) == leaf
    assert language.decode((*language.prompt(0), language.action_token(1))) == -1  # internal


def test_a_stop_tree_task_round_trips_through_tree_problem_json(stop_tree, tmp_path):
    rewards = torch.linspace(-1, 1, stop_tree.n_responses, dtype=torch.float64)
    task = TreeTask(stop_tree, rewards, torch.tensor([0, 1]), torch.tensor([2, 3]))
    task.write(tmp_path)
    assert json.loads((tmp_path / "tree_problem.json").read_text())["stop"] is True
    back = TreeTask.read(tmp_path)
    assert torch.equal(back.tree.children, stop_tree.children)
    assert torch.equal(back.tree.response_length, stop_tree.response_length)
    assert torch.equal(back.rewards, rewards)
    complete = TreeTask(Tree.complete(2, 2), torch.zeros(4), torch.tensor([0]), torch.tensor([1]))
    complete.write(tmp_path)
    assert "stop" not in json.loads((tmp_path / "tree_problem.json").read_text())
    assert TreeTask.read(tmp_path).tree.n_responses == 4


def test_rdpo_gets_the_response_lengths_of_a_stop_tree(stop_tree):
    language = TreeLanguage(stop_tree)
    depth = stop_tree.response_length
    short, long_ = int(torch.nonzero(depth == 1)[0]), int(torch.nonzero(depth == 3)[0])
    # chosen long / rejected short and the reverse: length gaps of +2 and -2 tokens
    examples, _ = language.examples(torch.tensor([long_, short]), torch.tensor([short, long_]))
    batch = collate_pairs(examples, language.PAD_ID)
    reference = build_model("tiny", seed=0, vocab_size=language.vocab_size)
    policy = perturbed(reference, scale=0.3)
    index = torch.arange(2)
    beta, alpha = 0.1, 0.5
    rdpo, _ = DAALoss("rdpo", beta, hyper={"alpha": alpha}, reference=reference)(
        policy, batch, index
    )
    dpo, _ = DAALoss("dpo", beta, reference=reference)(policy, batch, index)
    # the DPO margins h back from the DPO loss: -log σ(β h) per pair
    from llm.logprobs import concatenated_logps

    def logps(m):
        return concatenated_logps(m, batch.input_ids, batch.attention_mask, batch.response_mask)

    with torch.no_grad():
        pol, ref = logps(policy), logps(reference)
    assert pol.len_chosen.tolist() == [3, 1] and pol.len_rejected.tolist() == [1, 3]
    h = (pol.chosen - ref.chosen) - (pol.rejected - ref.rejected)
    gap = torch.tensor([2.0, -2.0])
    want = -F.logsigmoid(beta * h + alpha * gap).sum()
    torch.testing.assert_close(rdpo.detach(), want.to(rdpo.dtype), atol=1e-6, rtol=1e-6)
    assert abs(float(rdpo.detach()) - float(dpo.detach())) > 1e-3  # the lengths changed the loss


def _problem(tree: Tree, seed: int = 0):
    return build_problem(tree, [seed], ProblemSpec(reward="concave", pairs=2, sft_steps=20))


def test_no_keep_weights_gives_the_rows_of_a_run_that_kept_its_weights(stop_tree, tmp_path):
    problem = _problem(stop_tree)
    pairs = sampled_bt_pairs(stop_tree, problem.rewards[0], problem.ref_logp[0], 24, seed=0)
    held = sampled_bt_pairs(stop_tree, problem.rewards[0], problem.ref_logp[0], 6, seed=1)
    task = TreeTask(stop_tree, problem.rewards[0], pairs.chosen, pairs.rejected)
    sft = sft_llm(
        problem, tmp_path / "sft", model="tiny", seed=0, samples=32, epochs=1.0, lr=3e-3,
        batch_size=16, device="cpu", progress=False,
    )  # fmt: skip
    tables = {}
    for keep in (True, False):
        out = tmp_path / ("keep" if keep else "memory")
        spec = DAARun(
            "rdpo", 0.1, lr=3e-3, batch_size=4, epochs=1.0, checkpoints=3, seed=0, size="tiny",
            eval_samples=8, hyper={"alpha": 0.3}, keep_weights=keep,
        )  # fmt: skip
        daa = dict(device="cpu", progress=False, held_out=(held.chosen, held.rejected))
        frame = daa_llm(task, sft, spec, out, **daa)
        tables[keep] = read_table(out / "eval.csv")
        assert bool(checkpoint_folders(out)) == keep  # no weights written without keep
        if not keep:  # a finished in-memory run is read back, not retrained
            again = daa_llm(task, sft, spec, out, **daa)
            pd.testing.assert_frame_equal(again, frame)
    kept, memory = tables[True], tables[False]
    assert len(kept) == 1 + 3 and list(kept["checkpoint"]) == list(memory["checkpoint"])
    bookkeeping = ["checkpoint_path", DIGEST]
    assert memory["checkpoint_path"].iloc[1:].eq("in-memory").all()
    assert memory[DIGEST].iloc[1:].str.startswith("params:").all()
    pd.testing.assert_frame_equal(kept.drop(columns=bookkeeping), memory.drop(columns=bookkeeping))
    assert kept["exact_win_rate"].nunique() > 1  # training moved the policy: rows can differ


def test_bf16_weights_sft_and_daa_run_in_bf16_and_keep_fp32_folder_names(stop_tree, tmp_path):
    # The 6.9b stage's layout on an 80 GB card (scripts/gpu_figures.sh picks it): the SFT model
    # is written in bf16, the DAA run trains bf16 weights against a bf16 reference (the SFT
    # weights exactly) and is evaluated in memory like an fp32 run.
    problem = _problem(stop_tree)
    pairs = sampled_bt_pairs(stop_tree, problem.rewards[0], problem.ref_logp[0], 8, seed=0)
    task = TreeTask(stop_tree, problem.rewards[0], pairs.chosen, pairs.rejected)
    sft = sft_llm(
        problem, tmp_path / "sft", model="tiny", seed=0, samples=16, epochs=1.0, lr=3e-3,
        batch_size=8, device="cpu", progress=False, keep_state=False, precision="bf16-weights",
    )  # fmt: skip
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(sft / "model.safetensors").values()} == {torch.bfloat16}
    out = tmp_path / "dpo"
    spec = DAARun(
        "dpo", 0.1, lr=3e-3, batch_size=4, epochs=1.0, checkpoints=2, seed=0, size="tiny",
        eval_samples=4, keep_weights=False, reference_dtype="bf16", precision="bf16-weights",
    )  # fmt: skip
    frame = daa_llm(task, sft, spec, out, device="cpu", progress=False)
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16-weights"
    assert list(frame["checkpoint"]) == [0, 1, 2] and frame["exact_kl_reverse"].iloc[0] == 0
    assert frame["exact_kl_reverse"].iloc[-1] > 0  # the bf16 weights moved
    with pytest.raises(ValueError, match="precision must be one of"):
        daa_llm(task, sft, replace(spec, precision="fp8"), tmp_path / "x", device="cpu",
                progress=False)  # fmt: skip
    # fp32, the default, names its run folder as before the flag existed (main at 4008d99);
    # bf16-weights apart
    cfg = overopt.Config(out=str(tmp_path))
    before = tmp_path / "b4-len5-concave-14514d9d9b"
    assert overopt.output_folder(cfg) == before
    assert overopt.output_folder(replace(cfg, precision="bf16-weights")) != before


def test_the_quick_llm_family_is_one_epoch_with_ten_checkpoints_inside_it(tmp_path):
    run = paper_runs.llm_run(paper_runs.LLM_SIZES[0], quick=True)
    cfg = replace(run.config, out=str(tmp_path))
    folder = overopt.main(cfg)
    summary = read_table(folder / "summary.csv")
    assert set(summary["objective"]) == set(cfg.objectives) and (summary["checkpoints"] == 10).all()
    assert summary["responses"].iloc[0] == Tree.with_stop(cfg.branching, cfg.max_length).n_responses
    for run_dir in overopt.run_folders(cfg):
        table = read_table(run_dir / "eval.csv")
        inside = table[table["checkpoint"] > 0]["fraction_of_epoch"]
        assert len(inside) == 10 and inside.gt(0).all() and inside.le(1).all()
        assert inside.max() == 1.0  # the epoch's last step is a checkpoint
        config = json.loads((run_dir / "config.json").read_text())
        assert config["size"] == "tiny" and config["stage"] == "daa"  # figures read "size"
        lengths = TreeTask.read(run_dir).tree.response_length
        assert lengths.unique().numel() == cfg.max_length  # variable-length responses


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    from treemdp.runs.cli import run

    with pytest.raises(ValueError, match="--sizes must be Pythia shapes"):
        overopt.check(overopt.Config(sizes=("1B",)))
    with pytest.raises(ValueError, match="one epoch has only 2 step"):
        overopt.check(overopt.Config(pairs=16, batch=8, checkpoints=10))
    # one epoch is whole batches: 7 pairs of 4 would train 8 examples (fraction_of_epoch 8/7)
    with pytest.raises(ValueError, match="--pairs 7 is not a multiple of --batch 4"):
        overopt.check(overopt.Config(pairs=7, batch=4, checkpoints=1))
    for argv, message in [
        (["--device", "tpu"], "--device 'tpu' is not a device torch knows"),
        (["--explained", "2"], "--explained must be <= 1; got 2.0"),
        (["--betas", "0.1", "0.1"], "--betas values must be distinct"),
    ]:
        with pytest.raises(SystemExit) as e:
            run(overopt.Config, overopt.main, [*argv, "--out", str(tmp_path / "o")])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and message in line, line
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_help_says_what_support_and_explained_are(capsys):
    from treemdp.runs.cli import build_parser

    text = " ".join(build_parser(overopt.Config, "").format_help().split())
    assert "--support SUPPORT random pairs whose responses π_ref is fitted to" in text
    assert (
        "--explained EXPLAINED share of gold-reward variance the signal explains (>= 0) (<= 1)"
        in text
    )


def test_close_betas_get_their_own_run_folders():
    assert overopt.run_name("tiny", "dpo", 0.1) == "tiny-dpo-beta0.1"  # ordinary: as before
    assert overopt.run_name("tiny", "dpo", 0.1) != overopt.run_name("tiny", "dpo", 0.1000001)
    folders = overopt.run_folders(overopt.Config(betas=(0.1, 0.1000001)))
    assert len(set(folders)) == len(folders)


# scripts/gpu_figures.sh --cpu-dry-run (8 runs in 3 stages, the third in bf16-weights, drawn
# under one folder, no weights kept): tests/llm/test_gpu_all.py, whose dry run runs it.


TINY_RUN = [
    *("--objectives", "dpo", "--betas", "0.1", "--pairs", "8", "--batch", "4"),
    *("--checkpoints", "2", "--eval-samples", "4", "--eval-pairs", "4", "--sft-samples", "16"),
    *("--sft-epochs", "1", "--toy-sft-steps", "10", "--sizes", "tiny", "--branching", "3"),
    *("--max-length", "2", "--device", "cpu", "--no-progress"),
]


def test_ctrl_c_then_no_keep_weights_finishes_without_weights_and_a_deleted_eval_recomputes(
    tmp_path,
):
    """Ctrl-C (SIGINT right after the DAA run's first checkpoint, ``$TREEMDP_KILL_AFTER``) is one
    line and exit 130; finishing with --no-keep-weights leaves no weights of the --keep-weights
    start; a tampered sub-run eval.csv is named, and deleting it as advised recomputes it."""
    import signal
    import subprocess
    import sys

    from tests.llm.helpers_llm import ROOT, subprocess_env
    from treemdp.runs.cli import parse_config
    from treemdp.runs.killpoint import KILL_ENV, SIGNAL_ENV

    out = tmp_path / "out"
    env = {**subprocess_env(), KILL_ENV: "*/llm/tiny-dpo-*/latest.json:1", SIGNAL_ENV: "INT"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments/llm_overopt.py"), *TINY_RUN, "--out", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
        # a test run started in the background by a shell inherits SIGINT ignored; Ctrl-C needs
        # the default disposition, which Python then turns into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert done.returncode == 130, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert "interrupted" in line and "Traceback" not in done.stderr
    assert list(out.rglob("step-*")) and list(out.rglob("latest.json"))  # --keep-weights wrote

    cfg = parse_config(overopt.Config, [*TINY_RUN, "--no-keep-weights", "--out", str(out)])
    folder = overopt.main(cfg)
    assert not list(out.rglob("step-*")) and not list(out.rglob("latest.json"))
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("trainer_state.pt"))
    runs = read_table(folder / "runs.csv")

    (run_dir,) = overopt.run_folders(cfg)
    eval_csv = run_dir / "eval.csv"
    eval_csv.write_bytes(eval_csv.read_bytes() + b"0\n")  # tampered
    (folder / "summary.csv").unlink()  # the run is recomputed from its sub-runs
    with pytest.raises(ValueError, match=f"delete {eval_csv}") as e:
        overopt.main(cfg)
    assert (run_dir / "done").is_file(), e  # the stale marker the advice must get past
    eval_csv.unlink()  # as advised
    again = overopt.main(cfg)
    pd.testing.assert_frame_equal(read_table(again / "runs.csv"), runs)
