"""llm runs that never mix, never go stale, never save NaN (issue 18): a run folder belongs to one
configuration and one dataset, resume checks both, a missing checkpoint is named, divergence
stops with exit 3 and nothing non-finite saved, eval rows are tied to the weights they measured,
and the remaining bad inputs of llm_train / llm_eval are one line and exit 2."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pandas as pd
import pytest
import torch

from llm.eval_run import evaluate_run
from llm.model import load_model
from tests.llm.helpers_llm import load_cli
from tests.scripts import load_script
from treemdp.runs.cli import parse_config, run

TINY = [
    "--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7", "--batch-size", "2",
    "--micro-batch-size", "2", "--warmup-steps", "0", "--reference-dtype", "fp32",
    "--no-progress",
]  # fmt: skip
"""Two pairs, one step per epoch (batch 2): a checkpoint per step with --checkpoint-every 2."""


def fail(module, argv, capsys, code=2) -> str:
    """Run the command line; assert exit ``code`` and one error line (after any progress lines
    on stderr); return that line."""
    with pytest.raises(SystemExit) as exc:
        run(module.Config, module.main, argv)
    err = capsys.readouterr().err
    assert exc.value.code == code and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert ": error: " in line, err
    return line


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def lt():
    return load_cli()


@pytest.fixture(scope="module")
def trained(lt, tmp_path_factory):
    """A finished run in the folder its config names (lr 1e-3, 3 epochs, checkpoints 1, 2, 3)."""
    out = tmp_path_factory.mktemp("identity")
    args = [*TINY, "--lr", "1e-3", "--epochs", "3", "--checkpoint-every", "2", "--out", str(out)]
    final = lt.main(parse_config(lt.Config, args))
    return args, final.parent


def test_a_second_config_never_mixes_into_a_run_folder(lt, trained, capsys):
    # Issue 18.1: another --lr/--epochs and no --resume rewrote the log and the checkpoints of
    # the same steps, keeping the first run's later ones.
    args, folder = trained
    before = files(folder)
    other = [*args, "--lr", "1e-2", "--epochs", "2"]
    line = fail(lt, other, capsys)
    assert f"{folder} belongs to another run" in line
    assert "--lr 0.001 there, 0.01 now" in line and "--epochs 3.0 there, 2.0 now" in line
    assert "--run-name" in line
    assert files(folder) == before  # nothing rewritten
    # The same config is welcome: --resume on the finished run does nothing and says done.
    assert lt.main(parse_config(lt.Config, [*args, "--resume"])).name == "step-0000003"
    assert files(folder).keys() == before.keys()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--tree-pairs", "0>2,5>7"], "--tree-pairs"),  # other pairs, same count
        (["--tree-depth", "4"], "--tree-depth"),
        (["--reference-dtype", "fp16"], "--reference-dtype"),
        (["--objective", "ipo"], "--objective"),
        (["--beta", "0.5"], "--beta"),
    ],
)
def test_resume_refuses_another_config_or_data(lt, trained, capsys, change, named):
    # Issue 18.3: these resumed, said "done" and rewrote config.json over the old weights.
    args, folder = trained
    config = (folder / "config.json").read_bytes()
    line = fail(lt, [*args, *change, "--resume", "--run-name", folder.name], capsys)
    assert "belongs to another run" in line and named in line
    assert (folder / "config.json").read_bytes() == config


def test_resume_checks_the_checkpoints_identity_too(tmp_path, tiny_model, text_examples):
    # Behind config.json (which a user may edit), each checkpoint carries the run's identity.
    from llm.losses import DAALoss
    from llm.train import TrainConfig, train

    cfg = TrainConfig(lr=1e-3, warmup_steps=0, batch_size=4, micro_batch_size=4, epochs=1,
                      checkpoint_every=4)  # fmt: skip
    loss = DAALoss("dpo", 0.1, reference=copy.deepcopy(tiny_model))
    ident = {"objective": "dpo", "data_fingerprint": "a"}
    train(copy.deepcopy(tiny_model), text_examples, loss, cfg, tmp_path, pad_id=0,
          progress=False, run_info={"identity": ident})  # fmt: skip
    with pytest.raises(ValueError, match=r"settings changed \(\['data_fingerprint'\]\)"):
        train(copy.deepcopy(tiny_model), text_examples, loss, cfg, tmp_path, pad_id=0,
              resume=True, progress=False,
              run_info={"identity": {**ident, "data_fingerprint": "b"}})  # fmt: skip


def test_a_jsonl_file_with_other_rows_is_another_run(lt, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "a b", "chosen": " c", "rejected": " d"},
            {"prompt": "e f", "chosen": " g", "rejected": " h"}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--model", "tiny", "--source", "jsonl", "--data", str(data), "--batch-size", "2",
            "--micro-batch-size", "2", "--lr", "1e-3", "--warmup-steps", "0", "--epochs", "1",
            "--reference-dtype", "fp32", "--no-progress",
            "--out", str(tmp_path / "runs")]  # fmt: skip
    lt.main(parse_config(lt.Config, args))
    rows[1]["chosen"] = " z"  # same flags, same pair count, other data
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = fail(lt, [*args, "--resume"], capsys)
    assert "belongs to another run (data (another file, rows or tokenizer))" in line


def test_resume_with_a_missing_checkpoint_names_the_latest_complete_one(lt, trained, tmp_path,
                                                                        capsys):  # fmt: skip
    # Issue 18.4: latest.json naming a deleted checkpoint silently restarted from step 0.
    args, folder = trained
    copy_ = tmp_path / "copy"
    shutil.copytree(folder, copy_ / folder.name)
    shutil.rmtree(copy_ / folder.name / "step-0000003")
    moved = [a if a != str(folder.parent) else str(copy_) for a in args]
    log = (copy_ / folder.name / "log.csv").read_bytes()
    line = fail(lt, [*moved, "--resume"], capsys)
    assert "latest.json names step-0000003, which is missing or incomplete" in line
    assert '{"checkpoint": "step-0000002"}' in line
    assert (copy_ / folder.name / "log.csv").read_bytes() == log  # not restarted
    (copy_ / folder.name / "latest.json").write_text('{"checkpoint": "step-0000002"}')
    assert lt.main(parse_config(lt.Config, [*moved, "--resume"])).name == "step-0000003"


def test_divergence_stops_with_exit_3_and_saves_nothing_non_finite(lt, tmp_path, capsys):
    # Issue 18.6: --lr 1e6 logged NaN from step 2, saved NaN checkpoints and exited 0.
    out = tmp_path / "runs"
    args = [*TINY, "--lr", "1e6", "--epochs", "6", "--checkpoint-every", "2", "--out", str(out)]
    args += ["--max-grad-norm", "1e30", "--run-name", "nan"]
    line = fail(lt, args, capsys, code=3)
    assert "training diverged:" in line and "is not finite" in line and "at step " in line
    step = int(line.split("at step ")[1].split(";")[0])
    folder = out / "nan"
    log = pd.read_csv(folder / "log.csv") if (folder / "log.csv").exists() else pd.DataFrame()
    assert len(log) == step - 1 and log.notna().all().all()
    assert all(math.isfinite(v) for v in log.select_dtypes("number").to_numpy().ravel())
    from safetensors.torch import load_file

    for ckpt in folder.glob("step-*"):
        assert int(ckpt.name.split("-")[1]) < step
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values())


def test_eval_rows_are_tied_to_the_weights_they_measured(trained, tmp_path):
    # Issue 18.2: eval rows were reused by step number, so a retrained folder kept old KL rows.
    from llm.checkpoint import checkpoint_digest
    from treemdp.runs.eval_table import DIGEST

    le = load_script("experiments/llm_eval.py")
    _, folder = trained
    run_dir = tmp_path / "run"
    shutil.copytree(folder, run_dir)
    cfg = parse_config(le.Config, ["--run", str(run_dir), "--samples", "8", "--no-progress"])
    from treemdp.runs import read_config

    task = le.build_task(cfg, read_config(run_dir), run_dir)
    judge = le.build_judge(cfg, task, run_dir, "cpu")
    from llm.evaluate import EvalSettings

    loaded: list[str] = []

    def load(path):
        loaded.append(path.name)
        return load_model(path)

    settings = EvalSettings(samples=8)
    first = evaluate_run(run_dir, task, settings, judge, load=load, progress=False)
    assert first[DIGEST].tolist()[1:] == [
        checkpoint_digest(run_dir / f"step-000000{i}") for i in (1, 2, 3)
    ]
    # "Retrain" step 2 with other weights: the same folder, another checksum.
    other = run_dir / "step-0000002"
    shutil.rmtree(other)
    shutil.copytree(run_dir / "step-0000001", other)
    loaded.clear()
    again = evaluate_run(run_dir, task, settings, judge, load=load, progress=False)
    assert loaded == ["step-0000002"]  # only the changed checkpoint is evaluated again
    row = again.set_index("checkpoint").loc[2]
    assert row[DIGEST] == checkpoint_digest(run_dir / "step-0000001")
    assert row["kl_reverse"] != first.set_index("checkpoint").loc[2, "kl_reverse"]  # not stale
    assert len(again) == 4


def test_corrupt_eval_files_name_the_file_to_delete_not_the_run_folder(trained, tmp_path,
                                                                       capsys):  # fmt: skip
    # Issue 18.5 (eval.csv) and 18.9 (eval_reference.pt).
    le = load_script("experiments/llm_eval.py")
    _, folder = trained
    run_dir = tmp_path / "run"
    shutil.copytree(folder, run_dir)
    argv = ["--run", str(run_dir), "--samples", "8", "--no-progress"]
    run(le.Config, le.main, argv)
    capsys.readouterr()
    table = run_dir / "eval.csv"
    good = table.read_bytes()
    table.write_bytes(good[:-20])
    line = fail(le, argv, capsys)
    assert f"{table} is corrupt" in line and f"delete {table} and rerun" in line
    assert "--force" in line and f"delete the run folder {run_dir}" not in line
    table.write_bytes(good)
    ref = run_dir / "eval_reference.pt"
    ref.write_bytes(ref.read_bytes()[:50])
    shutil.rmtree(run_dir / "step-0000003")  # other weights at step 3: evaluated again
    shutil.copytree(run_dir / "step-0000001", run_dir / "step-0000003")
    line = fail(le, argv, capsys)
    assert f"{ref} is corrupt" in line and "delete it and rerun" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "tpu"], "--device 'tpu' is not a device torch knows"),
        (["--seed", str(2**63)], "--seed must be <= 4294967295"),
        (["--run-name", "../../x"], "--run-name '../../x' leaves --out"),
        (["--run-name", "/tmp/x"], "--run-name '/tmp/x' leaves --out"),
        # flags that cannot go together: refused before config.json and data.json are written
        (["--stage", "sft", "--packing", "pairs"], "--packing pairs"),
        (["--micro-batch-size", "3"], "--batch-size 2 must be a multiple of --micro-batch-size 3"),
    ],
)
def test_llm_train_bad_inputs_are_one_line(lt, tmp_path, capsys, argv, message):
    out = tmp_path / "a" / "b"
    with pytest.raises(SystemExit) as exc:
        run(lt.Config, lt.main, [*TINY, "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "Traceback" not in err and message in err.splitlines()[-1], err
    assert not (tmp_path / "x").exists() and not list(tmp_path.rglob("config.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only torch")
@pytest.mark.parametrize("script", ["experiments/llm_train.py", "experiments/llm_eval.py"])
def test_device_cuda_on_a_cpu_only_torch_is_one_line(script, trained, capsys):
    module = load_script(script)
    _, folder = trained
    argv = ["--run", str(folder)] if "eval" in script else [*TINY, "--out", str(folder.parent)]
    line = fail(module, [*argv, "--device", "cuda"], capsys)
    assert "--device cuda: this torch sees no CUDA device" in line and "--device cpu" in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"prompt": "a", "chosen": " b", "rejected": " c"}\n\xff\xfe garbage\n',
            "row 2: not UTF-8",
        ),
        (b'{"prompt": "a", "chosen": " b", "rejected": " c"}\n\x00\x01\x02\n', "row 2: not JSON"),
        (b'{"prompt": "a", "chosen": " b", "rejected": " \xe9t\xe9"}\n', "row 1: not UTF-8"),
    ],
)
def test_a_jsonl_with_bad_bytes_names_the_file_and_row_and_skip_skips_it(
    lt, tmp_path, capsys, content, message
):
    data = tmp_path / "d.jsonl"
    good = b'{"prompt": "x y", "chosen": " z", "rejected": " w"}\n'
    data.write_bytes(content + good)
    args = ["--model", "tiny", "--source", "jsonl", "--data", str(data), "--batch-size", "1",
            "--micro-batch-size", "1", "--lr", "1e-3", "--warmup-steps", "0", "--epochs", "1",
            "--reference-dtype", "fp32", "--no-progress", "--out", str(tmp_path / "o")]  # fmt: skip
    line = fail(lt, args, capsys)
    assert f"{data}: {message}" in line and "--on-bad-row skip" in line
    lt.main(parse_config(lt.Config, [*args, "--on-bad-row", "skip"]))
    report = json.loads(next((tmp_path / "o").glob("*/data.json")).read_text())
    assert report["skipped"] == 1 and message.split(": ")[1] in report["skipped_rows"][0]


def test_a_jsonl_with_a_bom_is_read_and_a_folder_is_named(tmp_path):
    from llm.data import read_jsonl

    data = tmp_path / "bom.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "chosen": " b", "rejected": " c"}\n')
    assert read_jsonl(data) == [(1, {"prompt": "a", "chosen": " b", "rejected": " c"})]
    with pytest.raises(ValueError, match=rf"data file {tmp_path} is a folder"):
        read_jsonl(tmp_path)
