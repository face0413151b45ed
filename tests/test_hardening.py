"""Bad input through the CLI: one error line naming the file/field/value and exit code 2, never a
traceback, and no run lost or left half-written. Each test is one case of issue 10's hardening list, or (from
"round two" on) of issue 25's."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tangentft.cli.main import app

runner = CliRunner()
WORDS = "good bad movie film great awful plot actor boring fun dull superb weak story".split()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(res, *fragments: str) -> str:
    """Assert exit 2 with exactly one output line, an error naming every fragment; return that line."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_task(folder: Path, rows: int = 24, extra: str = "", name: str = "train.tsv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["label\tsentence"] + [f"{i % 2}\t{' '.join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(2 + i % 5))}"
                                   for i in range(rows)]
    (folder / name).write_text("\n".join(lines) + "\n" + extra)
    return folder


def train_args(task: Path, out: Path, *extra) -> list:
    return ["train", "-m", "tiny-llama", "-t", task, "--max-steps", 2, "--n-eval", 0, "--batch-size", 4,
            "--out", out, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished tiny runs: S2FT on two different bases (seeds 0, 1) and on tiny-gpt2, LoRA, and full fine-tuning."""
    root = tmp_path_factory.mktemp("runs")
    task = write_task(root / "task", rows=48)
    (task / "test.tsv").write_text((task / "train.tsv").read_text())
    made = {}
    for name, extra in (("s2ft0", ["--method", "s2ft"]), ("s2ft1", ["--method", "s2ft", "--seed", 1]),
                        ("lora", ["--method", "lora", "--params", "lora(r=2):q,v@0"]),
                        ("full", ["--method", "full", "--params", "q@0"]),
                        ("s2ft_gpt2", ["--method", "s2ft", "-m", "tiny-gpt2"])):
        res = cli(*train_args(task, root / name, "--n-eval", 4, *extra))
        assert res.exit_code == 0, res.output
        made[name] = root / name
    made["task"] = task
    return made


def copy_run(runs, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[name], tmp_path / name))


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[: len(data) // 2])


# -- truncated / empty safetensors -----------------------------------------------------------------------------
SAFETENSORS_CASES = {
    "s2ft inspect": ("s2ft0", "adapter/adapter_model.safetensors", lambda r, o: ["s2ft", "inspect", r / "adapter"]),
    "s2ft fuse": ("s2ft0", "adapter/adapter_model.safetensors",
                  lambda r, o: ["s2ft", "fuse", r / "adapter", r / "adapter", "--out", o]),
    "s2ft merge": ("s2ft0", "adapter/adapter_model.safetensors",
                   lambda r, o: ["s2ft", "merge", r / "adapter", "-m", "tiny-llama", "--out", o]),
    "taskvec compare": ("full", "trained.safetensors", lambda r, o: ["taskvec", "compare", r, r, "--out", o]),
    "taskvec negate": ("lora", "adapter/adapter_model.safetensors", lambda r, o: ["taskvec", "negate", r, "--out", o]),
    "taskvec add": ("s2ft0", "adapter/adapter_model.safetensors",
                    lambda r, o: ["taskvec", "add", r, r, "--alpha", "1", "--out", o]),
    "s2ft to-lora": ("s2ft0", "adapter/adapter_model.safetensors",
                     lambda r, o: ["s2ft", "to-lora", r / "adapter", "-m", "tiny-llama", "--out", o]),
    "train --resume": ("full", "checkpoint.safetensors", lambda r, o: ["train", "--resume", r]),
}


@pytest.mark.parametrize("how", ["truncated", "empty"])
@pytest.mark.parametrize("case", list(SAFETENSORS_CASES))
def test_a_damaged_safetensors_file_is_one_line(runs, tmp_path, case, how):
    name, rel, args = SAFETENSORS_CASES[case]
    run = copy_run(runs, name, tmp_path)
    damage(run / rel, how)
    out = tmp_path / "out"
    refused(cli(*args(run, out)), f"{run / rel} is not a valid safetensors file (truncated?)")
    assert not out.exists()


# -- JSON of the wrong shape -----------------------------------------------------------------------------------
@pytest.mark.parametrize("content, expected", [("[1, 2]", "got a list"), ('{"train": 5}', "needs 'peft_type'")])
def test_adapter_config_of_the_wrong_shape_names_the_file(runs, tmp_path, content, expected):
    run = copy_run(runs, "s2ft0", tmp_path)
    (run / "adapter" / "adapter_config.json").write_text(content)
    refused(cli("s2ft", "inspect", run / "adapter"), f"{run / 'adapter' / 'adapter_config.json'}: expected an adapter config",
            expected)


@pytest.mark.parametrize("command", ["train --resume", "taskvec negate"])
@pytest.mark.parametrize("content, expected", [("[]", "got a list"), ('{"train": 5}', "field 'train' is a number 5")])
def test_run_config_of_the_wrong_shape_names_the_file(runs, tmp_path, command, content, expected):
    run = copy_run(runs, "full", tmp_path)
    (run / "config.json").write_text(content)
    args = ["train", "--resume", run] if command == "train --resume" else ["taskvec", "negate", run, "--out", tmp_path / "o"]
    refused(cli(*args), f"{run / 'config.json'}: expected the config.json of a tangentft train run", expected)


@pytest.mark.parametrize("content, expected", [("[]", "expected an analysis report.json, got a list"),
                                               ('{"krr": 5}', "not an analysis report")])
def test_analysis_report_of_the_wrong_shape_names_the_file(tmp_path, content, expected):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(content)
    refused(cli("analyze", "--compare", tmp_path / "a"), f"{tmp_path / 'a' / 'report.json'}: ", expected)


def test_a_metrics_row_without_its_step_names_file_and_line(runs, tmp_path):
    run = copy_run(runs, "full", tmp_path)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"train_loss": 1.0}\n')
    refused(cli("train", "--resume", run, "--max-steps", 3), "metrics.jsonl:", "field 'step' is missing")


# -- adapters of different bases -----------------------------------------------------------------------------------
def test_fuse_refuses_adapters_made_for_different_bases(runs, tmp_path):
    out = tmp_path / "fused"
    refused(cli("s2ft", "fuse", runs["s2ft0"] / "adapter", runs["s2ft1"] / "adapter", "--out", out),
            "adapters 's2ft0' and 's2ft1' were made for different base models")
    assert not out.exists()


# -- --out that cannot be a folder ---------------------------------------------------------------------------------
OUT_COMMANDS = {
    "train": lambda runs, o: train_args(runs["task"], o),
    "ntk": lambda runs, o: ["ntk", "--model", "tiny-llama", "--task", runs["task"], "--params", "q@0", "--n", 2, "--out", o],
    "analyze": lambda runs, o: ["analyze", "--model", "tiny-llama", "--task", runs["task"], "--params", "q@0", "--out", o],
    "s2ft fuse": lambda runs, o: ["s2ft", "fuse", runs["s2ft0"] / "adapter", "--out", o],
    "taskvec negate": lambda runs, o: ["taskvec", "negate", runs["full"], "--out", o],
}


@pytest.mark.parametrize("kind", ["a file", "under a file", "not creatable"])
@pytest.mark.parametrize("command", list(OUT_COMMANDS))
def test_out_that_cannot_be_a_folder_is_one_line(runs, tmp_path, command, kind):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    out = {"a file": afile, "under a file": afile / "sub", "not creatable": Path("/proc/tangentft-out")}[kind]
    if kind == "not creatable" and not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    line = refused(cli(*OUT_COMMANDS[command](runs, out)), str(out if kind != "under a file" else afile))
    assert "exists" in line or "file" in line or "cannot create" in line
    assert afile.read_text() == "keep me"


# -- divergence ----------------------------------------------------------------------------------------------------
def test_an_infinite_learning_rate_is_refused_before_anything_is_written(runs, tmp_path):
    refused(cli(*train_args(runs["task"], tmp_path / "r", "--lr", "inf")), "lr must be a finite number, got inf")
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_and_saves_no_weights(runs, tmp_path):
    out = tmp_path / "r"
    res = cli(*train_args(runs["task"], out, "--lr", "1e10", "--method", "full", "--max-steps", 10))
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    warning, error = (line for line in res.output.splitlines() if line.strip())  # exactly these two lines
    assert warning.startswith("warning: lr=1e+10 is unusually large for adamw"), warning
    assert error.startswith("error: ") and "training diverged at step" in error and "learning rate 1e+10" in error
    assert not out.exists()


def test_a_learning_rate_above_one_for_adamw_is_one_warning_line(runs, tmp_path):
    res = cli(*train_args(runs["task"], tmp_path / "r", "--lr", "2", "--method", "lora"))
    assert res.exit_code == 0, res.output
    warnings_ = [line for line in res.output.splitlines() if "lr=2" in line]
    assert warnings_ == ["warning: lr=2 is unusually large for adamw: each step moves every trained weight by about "
                         "lr (usual values are 1e-5 to 1e-2)"], res.output
    import warnings

    from tangentft.train.config import TrainConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(lr=1.0)
        TrainConfig(lr=2.0, optimizer="sgd")  # SGD's step scales with the gradient: no fixed threshold


def test_check_diverged_names_the_non_finite_tensor():
    import torch

    from tangentft.errors import TangentError
    from tangentft.train.loop import check_diverged

    check_diverged(3, 0.5, {"w": torch.ones(2)}, 1e-3)
    with pytest.raises(TangentError, match="step 3: non-finite weights in w"):
        check_diverged(3, 0.5, {"w": torch.tensor([1.0, float("nan")])}, 1e-3)
    with pytest.raises(TangentError, match="step 4: the loss is inf"):
        check_diverged(4, float("inf"), {}, 1e-3)


# -- existing runs: refuse, overwrite as a whole, resume ------------------------------------------------------------
def test_out_holding_a_run_is_refused_without_overwrite(runs, tmp_path):
    run = copy_run(runs, "full", tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    refused(cli(*train_args(runs["task"], run)), f"{run} already holds a training run")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_overwrite_replaces_the_whole_folder(runs, tmp_path):
    run = copy_run(runs, "full", tmp_path)  # trained.safetensors from a full run
    (run / "stale.txt").write_text("old")
    res = cli(*train_args(runs["task"], run, "--overwrite", "--params", "lora(r=2):q@0"))
    assert res.exit_code == 0, res.output
    assert not (run / "stale.txt").exists() and not (run / "trained.safetensors").exists()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["train"]["method"] == "lora"


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_overwrite_puts_the_old_run_back(runs, tmp_path):
    """--overwrite sets the old run aside and deletes it only when the new run ends (or leaves a checkpoint): a
    replacement stopped before that — here refused mid-run — leaves the old run byte for byte, and nothing beside."""
    from tangentft.errors import TangentError
    from tangentft.train.run import resume_config, run_training

    run = copy_run(runs, "full", tmp_path)
    before = _tree(run)
    cfg = resume_config(run)

    def stop(step, total, info):
        raise TangentError("stopped at step 1")

    with pytest.raises(TangentError, match="stopped at step 1"):
        run_training(cfg, run, overwrite=True, callback=stop)
    assert _tree(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    done = run_training(cfg, run, overwrite=True)  # and a replacement that ends leaves only the new run
    assert done["steps"] == cfg.max_steps and sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_finish_writes_while_the_run_still_holds_its_folder(runs, tmp_path):
    """A caller's last writes (``train --predict``'s comparison) happen under the run's lock: a second writer then
    is refused, naming this process."""
    import os

    from tangentft.errors import TangentError
    from tangentft.io import folder_lock
    from tangentft.train.run import resume_config, run_training

    run = copy_run(runs, "full", tmp_path)
    seen = []

    def finish(summary):
        with pytest.raises(TangentError, match=str(os.getpid())):
            with folder_lock(run):
                pass
        seen.append(summary["steps"])
        return {**summary, "finished": True}

    out = run_training(resume_config(run), run, overwrite=True, finish=finish)
    assert seen == [out["steps"]] and out["finished"]


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(runs, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    refused(cli(*train_args(runs["task"], tmp_path, "--overwrite")), "holds files that are not a tangentft run")
    assert (tmp_path / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("extra, expected", [
    (["--params", "q@5-2"], "reversed layer range '5-2'"),
    (["--method", "head"], "method 'head' trains an encoder's task head"),
    (["--params", "lora(r=8,foo=1):q"], "unknown LoRA option 'foo'"),
])
def test_a_run_refused_at_validation_leaves_nothing(runs, tmp_path, extra, expected):
    out = tmp_path / "r"
    refused(cli(*train_args(runs["task"], out, *extra)), expected)
    assert not out.exists()


def test_resume_refuses_options_it_cannot_apply(runs, tmp_path):
    run = copy_run(runs, "full", tmp_path)
    refused(cli("train", "--resume", run, "--lr", "0.1"), "resume: lr was 0.0001", "got 0.1")
    refused(cli("train", "--resume", run, "--max-steps", 1), "max_steps 1 is below the 2 steps")
    refused(cli("train", "--resume", run, "--overwrite"), "give one of them")


def test_resume_extends_max_steps_and_records_it(runs, tmp_path):
    run = copy_run(runs, "full", tmp_path)
    res = cli("train", "--resume", run, "--max-steps", 4)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 4
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())][-1] == 4


# -- labels and scores outside the declared classes / range -------------------------------------------------------
def test_a_label_outside_the_declared_classes_names_file_and_line(tmp_path):
    task = write_task(tmp_path / "t", rows=20, extra="7\tthis one is odd\n")
    refused(cli(*train_args(task, tmp_path / "r")), f"{task / 'train.tsv'}:22: label 7 is outside the classes 0..1",
            "num_labels=8")
    assert not (tmp_path / "r").exists()
    res = cli("data", "inspect", task, "--num-labels", 8)
    assert res.exit_code == 0, res.output


def test_an_stsb_score_outside_0_5_names_file_and_line(tmp_path):
    folder = tmp_path / "stsb"
    folder.mkdir()
    rows = ["score\tsentence1\tsentence2"] + [f"{i % 6}.0\ta {WORDS[i]}\tthe {WORDS[i + 1]}" for i in range(8)]
    (folder / "train.tsv").write_text("\n".join(rows + ["7.5\tx y\tz w"]) + "\n")
    refused(cli("data", "inspect", folder), f"{folder / 'train.tsv'}:10: score 7.5 is outside the range 0–5 of task 'stsb'")
    assert cli("data", "inspect", folder, "--score-range", "0,8").exit_code == 0
    refused(cli("data", "inspect", folder, "--score-range", "8"), "--score-range takes two numbers")


# -- precise messages ----------------------------------------------------------------------------------------------
def test_groups_errors_say_they_are_groups(runs, tmp_path):
    refused(cli("ntk", "--model", "tiny-llama", "--task", runs["task"], "--params", "q@0", "--n", 2, "--groups", "banana",
                "--out", tmp_path / "k"), "groups 'banana' is neither a keyword", "unknown module type 'banana'")
    assert not (tmp_path / "k").exists()


def test_layers_beyond_the_model_are_named(runs, tmp_path):
    refused(cli("ntk", "--model", "tiny-llama", "--task", runs["task"], "--params", "q@7", "--n", 2, "--out", tmp_path / "k"),
            "layer 7 in '@7' does not exist: the model has layers 0-1")


def test_an_unreachable_hub_id_says_so(runs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refused(cli(*train_args(runs["task"], tmp_path / "r", "-m", "nobody/no-such-model")),
            "unknown model 'nobody/no-such-model': not a registry name or local folder, and the hub is not reachable")


# -- what a user sees ----------------------------------------------------------------------------------------------
def test_warnings_are_one_readable_line(runs, tmp_path):
    res = cli("ntk", "--model", "tiny-bert", "--task", runs["task"], "--params", "head", "--n", 40, "--out", tmp_path / "k")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if "ill-conditioned" in line]
    assert warned == ["warning: kernel ill-conditioned (κ = inf); regularize before solving"]
    assert "UserWarning" not in res.output and "warnings.warn" not in res.output


def test_markdown_images_are_printed_as_written(runs, tmp_path):
    res = cli("taskvec", "compare", runs["s2ft0"], runs["full"], "--n-kernel", 4, "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "![similarity](similarity.png)" in res.output


def test_written_files_get_normal_permissions(runs):
    umask = os.umask(0)
    os.umask(umask)
    for path in runs["full"].rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_merged_model_folder_gets_normal_permissions(runs, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "merged"
    res = cli("s2ft", "merge", runs["s2ft0"] / "adapter", "-m", "tiny-llama", "--out", out)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in out.iterdir() if p.is_file())


def test_checking_an_out_folder_creates_nothing(tmp_path, monkeypatch):
    """Ranks check one --out folder at once; a check that created the folder and removed it again pulled it from
    under another rank's probe (the README's torchrun line failed that way)."""
    from tangentft.errors import TangentError
    from tangentft.io import check_out_dir

    def no(*_a, **_k):
        raise AssertionError("check_out_dir must not create or remove folders")

    out = tmp_path / "a" / "b"
    with monkeypatch.context() as m:
        m.setattr(os, "mkdir", no)
        m.setattr(os, "rmdir", no)
        assert check_out_dir(out) == out
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a probe file is left
    (tmp_path / "f").write_text("x")
    with pytest.raises(TangentError, match="is a file"):
        check_out_dir(tmp_path / "f" / "sub")
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(TangentError, match="cannot create folder"):
            check_out_dir(ro / "new")


# -- round two (issue 25): runs lost ---------------------------------------------------------------------------------
# What a running ``train`` does to its folder (tangentft.io.folder_lock), without importing torch.
HOLD = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1] + '/.tangentft.lock', os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.ftruncate(fd, 0)\nos.write(fd, b'%d\\n' % os.getpid())\nprint('held', flush=True)\ntime.sleep(60)")


@pytest.fixture
def holder():
    """Start a second process holding a folder's lock, as a running ``train`` does; yields ``hold(folder)``."""
    import subprocess
    import sys

    procs = []

    def hold(folder: Path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(runs, tmp_path, holder):
    """Case 1: two processes writing one --out interleaved their metrics and kept one run's adapter."""
    run = copy_run(runs, "full", tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".tangentft.lock"}
    proc = holder(run)
    for args in (["train", "--resume", run, "--max-steps", 4], train_args(runs["task"], run, "--overwrite")):
        refused(cli(*args), f"{run} is in use by another tangentft process (pid {proc.pid})")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".tangentft.lock"} == before
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = holder(fresh)
    refused(cli(*train_args(runs["task"], fresh)), f"{fresh} is in use by another tangentft process (pid {proc.pid})")
    assert [p.name for p in fresh.iterdir()] == [".tangentft.lock"]


def test_a_killed_writer_leaves_no_stale_lock(runs, tmp_path, holder):
    """Case 1: the kernel drops a dead process's flock, so a killed run resumes at once."""
    run = copy_run(runs, "full", tmp_path)
    proc = holder(run)
    proc.kill()
    proc.wait()
    res = cli("train", "--resume", run, "--max-steps", 3)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


def test_a_folder_locked_in_this_process_is_refused_too(runs, tmp_path):
    """flock belongs to the open file, so even a second run started in the same process (a notebook) is refused."""
    from tangentft.io import folder_lock

    out = tmp_path / "r"
    out.mkdir()
    with folder_lock(out):
        refused(cli(*train_args(runs["task"], out)), f"{out} is in use by another tangentft process (pid {os.getpid()})")
    res = cli(*train_args(runs["task"], out))
    assert res.exit_code == 0, res.output


def test_resume_of_a_trained_run_without_its_checkpoint_refuses(runs, tmp_path):
    """Case 2: the run restarted from step 0 and replaced the finished adapter and metrics without a word."""
    run = copy_run(runs, "lora", tmp_path)
    (run / "checkpoint.safetensors").unlink()
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refused(cli("train", "--resume", run, "--max-steps", 6),
            f"resume: {run / 'checkpoint.safetensors'} is missing but the run in {run} finished after 2 steps")
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (run / "summary.json").unlink()  # killed before it finished: its metrics still say it trained
    refused(cli("train", "--resume", run, "--max-steps", 6), "recorded 2 steps")


@pytest.mark.parametrize("steps, more", [(2, 4)])
def test_every_step_of_an_extended_run_changes_theta(runs, tmp_path, steps, more):
    """Case 3: the checkpoint's rate was the old schedule's 0 at its last step, so the first new step did nothing."""
    run = tmp_path / "r"
    res = cli(*train_args(runs["task"], run, "--method", "full", "--params", "q@0", "--max-steps", steps,
                          "--eval-every", 1, "--warmup-ratio", 0))
    assert res.exit_code == 0, res.output
    res = cli("train", "--resume", run, "--max-steps", more)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(more + 1))
    dist = [r["theta_dist"] for r in rows]
    assert all(b != a for a, b in zip(dist[steps - 1:-1], dist[steps:], strict=True)), dist
    assert all(r["lr"] > 0 for r in rows[steps + 1:-1]) and rows[-1]["lr"] == 0, [r["lr"] for r in rows]


# -- round two: tracebacks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "ntk"])
def test_an_integer_beyond_64_bits_is_refused_where_it_is_parsed(runs, tmp_path, command):
    """Case 4: --seed 99999999999999999999999 overflowed inside torch.manual_seed."""
    out = tmp_path / "r"
    args = (train_args(runs["task"], out) if command == "train"
            else ["ntk", "--model", "tiny-llama", "--task", runs["task"], "--params", "q@0", "--n", 2, "--out", out])
    refused(cli(*args, "--seed", "99999999999999999999999"), "--seed 99999999999999999999999 is out of range")
    assert not out.exists()
    from tangentft.errors import TangentError
    from tangentft.train.config import TrainConfig

    with pytest.raises(TangentError, match="seed must be in 0"):
        TrainConfig(seed=2**70)


def test_plan_computes_sizes_without_allocating_them(tmp_path):
    """Case 5: a LoRA rank of 10⁹ made PEFT allocate its factors (2.3 TB) on the CPU instead of the meta device."""
    from tangentft.analysis.memory import memory_plan

    res = cli("plan", "--model", "tiny-llama", "--params", "lora(r=1000000000):q,v@all", "--n", 4)
    assert res.exit_code == 0, res.output
    assert "selected 224,000,000,000" in res.output, res.output
    assert "warning: LoRA rank r=1000000000 exceeds the full rank 16" in res.output
    with pytest.warns(UserWarning, match="exceeds the full rank 32"):
        plan = memory_plan("tiny-llama", "lora(r=1000000000):q@0", 4)
    assert plan.selected_params == 2 * 64 * 10**9 // 2


def _full_disk(tmp_path: Path, size: str = "40k"):
    """A tiny tmpfs at tmp_path/full (unmounted by the caller), or None where this machine cannot mount one."""
    import subprocess

    where = tmp_path / "full"
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    except OSError:  # no mount command here
        return None
    return where if done.returncode == 0 else None


def test_a_full_disk_is_one_line_and_leaves_nothing(runs, tmp_path, monkeypatch):
    """Case 6: a run into a full disk ended in SafetensorError and left a partial folder that --resume tripped on.
    On a tmpfs of 40 kB where the machine lets us mount one, else with every safetensors write failing ENOSPC."""
    import subprocess

    disk = _full_disk(tmp_path)
    if disk is None:
        from safetensors import SafetensorError
        from safetensors import torch as st_torch

        def enospc(*_a, **_k):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(st_torch, "save_file", enospc)
        disk = tmp_path
    try:
        out = disk / "r"
        refused(cli(*train_args(runs["task"], out, "--method", "full", "--params", "q@0,1", "--n-eval", 2)),
                f"cannot write {out}/", "No space left on device")
        assert not out.exists() and [p.name for p in disk.iterdir() if p.name != "full"] == []
        refused(cli("train", "--resume", out), "not a tangentft train output folder")
    finally:
        if disk != tmp_path:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_method_refuses_a_dtype_it_cannot_train_before_writing_anything(runs, tmp_path):
    """Case 7: linearized with float16 weights died with "Half != float" and left config.json, after which the
    same --out was refused as holding a run."""
    out = tmp_path / "r"
    for method, dtype in (("linearized", "float16"), ("s2ft", "bfloat16")):
        refused(cli(*train_args(runs["task"], out, "--method", method, "--params", "q@0", "--dtype", dtype)),
                f"method '{method}' does not train with dtype {dtype}")
        assert not out.exists()
    res = cli(*train_args(runs["task"], out, "--method", "linearized", "--params", "q@0", "--dtype", "bfloat16"))
    assert res.exit_code == 0, res.output


# -- round two: accepted silently -----------------------------------------------------------------------------------
@pytest.mark.parametrize("content, expected", [
    ("label\tsentence\n0\t \n1\t\n", "every sentence is empty (2 rows)"),
    ("label\tsentence\tlabel\n0\tgood\t1\n1\tbad\t0\n", "column 'label' appears 2 times in the header (columns 1, 3)"),
])
def test_task_files_that_cannot_mean_anything_are_refused(tmp_path, content, expected):
    """Case 9: every sentence empty, or a duplicated column of conflicting values (the first was used)."""
    (tmp_path / "train.tsv").write_text(content)
    refused(cli("data", "inspect", tmp_path), f"{tmp_path / 'train.tsv'}", expected)


def test_a_run_without_evaluation_says_so(runs, tmp_path):
    """Case 10: no eval split printed `eval_loss nan metric nan` and nothing else."""
    task = write_task(tmp_path / "t")  # train.tsv only
    res = cli(*train_args(task, tmp_path / "r", "--n-eval", 8))
    assert res.exit_code == 0, res.output
    assert "warning: task 't' has no dev or test split: the run records no eval loss or metric" in res.output
    assert "no eval examples" in res.output and "nan" not in res.output


def test_a_class_seen_only_outside_train_is_warned_about(tmp_path):
    """Case 11: a class only in the test split gets an output and no training example."""
    task = write_task(tmp_path / "t")
    (task / "test.tsv").write_text("label\tsentence\n0\tgood\n2\tbad film\n")
    res = cli("data", "inspect", task)
    assert res.exit_code == 0, res.output
    assert (f"warning: {task / 'test.tsv'}: class 2 ('2') has examples here but none in {task / 'train.tsv'}; the model "
            "gets no training example for it") in res.output


def test_more_label_words_than_classes_are_warned_about(tmp_path):
    """Case 12: --label-words with more words than the task has classes (the words do declare the classes, as
    load_task documents, so it is a warning; num_labels says the files lack a class on purpose)."""
    task = write_task(tmp_path / "t")
    res = cli("data", "inspect", task, "--label-words", "bad,good,meh")
    assert res.exit_code == 0, res.output
    assert ("warning: task 't': 3 label words ['bad', 'good', 'meh'] given but the labels only reach 1: class 2 gets "
            "an output and no example") in res.output
    res = cli("data", "inspect", task, "--label-words", "bad,good,meh", "--num-labels", 3)
    assert res.exit_code == 0 and "warning" not in res.output, res.output


@pytest.mark.parametrize("extra, expected", [
    (["--lam", 5], "lam=5.0 needs a pull toward θ0 to weigh, but reg is 'none'"),
    (["--reg", "l2", "--lam", 1, "--reg-per-element"], "reg_per_element decides the selective pull per element"),
    (["--predict-n", 8], "--predict-n sets the kernel sample of --predict"),
    (["--refresh", 2], "--refresh re-forecasts a predicted run; add --predict"),
    (["--predict", "--refresh", 0], "refresh interval must be a positive number of steps, got 0"),
    (["--lam", "nan", "--reg", "l2"], "--lam must be a finite number, got nan"),
    (["--method-opt", "lora_alpha=inf"], "option lora_alpha='inf': expected a finite number"),
])
def test_an_option_that_needs_another_or_a_finite_value_says_so(runs, tmp_path, extra, expected):
    """Case 13 and its class: an option given without the one it acts through, or a number no option can mean."""
    out = tmp_path / "r"
    refused(cli(*train_args(runs["task"], out, *extra)), expected)
    assert not out.exists()


def test_a_lora_rank_beyond_the_full_rank_is_warned_about(tmp_path):
    """Case 14: lora(r=100000) on a ~1M-parameter model trained 6.4M parameters without a word."""
    res = cli("plan", "--model", "tiny-llama", "--params", "lora(r=100000):q@0", "--n", 4)
    assert res.exit_code == 0, res.output
    assert "warning: LoRA rank r=100000 exceeds the full rank 32 of model.layers.0.self_attn.q_proj" in res.output


@pytest.mark.parametrize("args, expected", [
    (lambda r, o: ["taskvec", "add", r["full"], r["full"], "--alpha", "nan", "--out", o], "--alpha must be finite numbers"),
    (lambda r, o: ["taskvec", "negate", r["full"], "--alpha", "inf", "--out", o], "--alpha must be a finite number, got inf"),
    (lambda r, o: ["s2ft", "fuse", r["s2ft0"] / "adapter", r["s2ft0"] / "adapter", "--weights", "nan,1", "--out", o],
     "--weights must be finite numbers, got nan"),
    (lambda r, o: ["s2ft", "fuse", r["s2ft0"] / "adapter", r["s2ft_gpt2"] / "adapter", "--out", o],
     "adapters 's2ft0' and 's2ft_gpt2' were made for different base models ('tiny-llama' and 'tiny-gpt2')"),
])
def test_combining_adapters_refuses_non_finite_factors_and_other_bases(runs, tmp_path, args, expected):
    """Cases 15, 16: NaN/inf alphas and weights wrote adapters with NaN outputs; a tiny-llama and a tiny-gpt2
    adapter were fused (both fingerprints kept)."""
    out = tmp_path / "o"
    refused(cli(*args(runs, out)), expected)
    assert not out.exists()


def test_the_library_refuses_non_finite_factors_too():
    from tangentft.adapters.fuse import fuse
    from tangentft.errors import TangentError
    from tangentft.taskvec.ops import negate

    with pytest.raises(TangentError, match="weight nan is not a finite number"):
        fuse([object(), object()], [float("nan"), 1.0])
    with pytest.raises(TangentError, match="positive finite number"):
        negate("nowhere", alpha=float("inf"), out=Path("nowhere"))


# -- round two: clearer messages, what users see ----------------------------------------------------------------------
def test_a_piped_run_prints_plain_progress_lines(runs, tmp_path, monkeypatch):
    """A CI log (stderr not a terminal) showed no progress during a 13-minute analyze: plain lines now, at most one
    per PLAIN_EVERY_S (0 here, so every update prints one)."""
    import re

    from tangentft.cli import common

    monkeypatch.setattr(common, "PLAIN_EVERY_S", 0.0)
    res = cli(*train_args(runs["task"], tmp_path / "r", "--method", "full", "--params", "q@0"))
    assert res.exit_code == 0, res.output
    plain = [line for line in res.output.splitlines() if re.fullmatch(r"full loss \S+: [12]/2, \d+ s elapsed", line)]
    assert len(plain) == 2, res.output


def test_train_predict_shows_the_kernel_and_why_it_costs_more(runs, tmp_path, monkeypatch):
    """`train --predict` showed nothing during its SignGD kernel (120 s on MiniLM)."""
    from tangentft.cli import common

    monkeypatch.setattr(common, "PLAIN_EVERY_S", 0.0)
    res = cli(*train_args(runs["task"], tmp_path / "r", "--n-eval", 4, "--predict", "--predict-n", 8))
    assert res.exit_code == 0, res.output
    assert "predicting the curve: kernel passes, SignGD kernel (AdamW; materializes every example's gradient): " \
        in res.output, res.output


def _fake_conversion(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    return folder


def test_the_gguf_cache_is_keyed_by_content(tmp_path, monkeypatch):
    """Each reinstall re-converted SmolLM2's GGUF (keyed by mtime) and added another 538 MB copy."""
    from tangentft.models import gguf_cache

    monkeypatch.setenv("TANGENTFT_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "site1" / "model.gguf"
    first.parent.mkdir()
    first.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    digest = gguf_cache.content_digest(first, tmp_path / "cache")
    converted = _fake_conversion(tmp_path / "cache" / f"smollm2-{digest}")
    assert gguf_cache.dequantized_folder(first, "smollm2") == converted
    again = tmp_path / "site2" / "model.gguf"  # a reinstall: same bytes, new path and mtime
    again.parent.mkdir()
    again.write_bytes(first.read_bytes())
    os.utime(again, (1, 1))
    assert gguf_cache.dequantized_folder(again, "smollm2") == converted
    st = first.stat()  # a cache made under the old key (name, size, mtime) is moved to the content key, not redone
    shutil.rmtree(converted)
    _fake_conversion(tmp_path / "cache" / f"smollm2-{st.st_size}-{int(st.st_mtime)}")
    assert gguf_cache.dequantized_folder(first, "smollm2") == converted and (converted / "config.json").is_file()


def test_a_cache_path_that_is_a_file_fails_before_converting(tmp_path, monkeypatch):
    """TANGENTFT_CACHE pointing at a file: 51 s of conversion, then "File exists"."""
    from tangentft.errors import TangentError
    from tangentft.models import gguf_cache

    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("TANGENTFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(TangentError, match=f"TANGENTFT_CACHE={tmp_path / 'cache'} is a file, not a folder"):
        gguf_cache.dequantized_folder(tmp_path / "no.gguf", "smollm2")


def test_an_hf_dataset_offline_fails_fast(tmp_path, monkeypatch):
    """`-t hf:NAME` offline: 39 s of retry noise before the one-line error."""
    import time

    pytest.importorskip("datasets")
    from tangentft.data import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    refused(cli("data", "inspect", "hf:nobody/no-such-dataset"), "hf:nobody/no-such-dataset: the Hugging Face hub is "
            "not reachable")
    assert time.perf_counter() - start < 10


def test_a_column_mapped_away_is_named(tmp_path):
    """`--label-column sentence` said "missing column 'sentence' … found: 'label', 'sentence'"."""
    task = write_task(tmp_path / "t")
    refused(cli("data", "inspect", task, "--label-column", "sentence"),
            "column 'sentence' is mapped to 'label', so the task has no 'sentence' column")


@pytest.mark.parametrize("kind", ["loop", "folder"])
def test_a_split_name_that_is_no_file_is_named(tmp_path, kind):
    """A symlink loop or a folder named train.tsv read "no split file … found: test.tsv, train.tsv"."""
    task = tmp_path / "t"
    task.mkdir()
    if kind == "loop":
        (task / "train.tsv").symlink_to(task / "train.tsv")
        refused(cli("data", "inspect", task), f"{task / 'train.tsv'}: a symbolic link that leads nowhere")
    else:
        (task / "train.tsv").mkdir()
        refused(cli("data", "inspect", task), f"{task / 'train.tsv'} is a folder, not a split file")


def test_the_holder_named_is_the_first_line_of_the_lock_file(tmp_path):
    """A lock file once written by a longer pid keeps its tail when a shorter pid is written over it without a
    truncate: the error names the pid on the first line, on one line."""
    import subprocess
    import sys

    from tangentft.errors import TangentError
    from tangentft.io import LOCK, folder_lock

    script = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\nos.pwrite(fd, b'777\\n12345\\n', 0)\nprint('held', flush=True)\n"
              "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(TangentError) as err, folder_lock(tmp_path):
            pass
        assert "(pid 777);" in err.value.message and "\n" not in err.value.message
    finally:
        proc.kill()
        proc.wait()
