"""Property tests: generated task files, selection specs and numeric options thrown at the CLI in-process.

Whatever the input, a command ends with exit code 0 or 2 — never a traceback — and an output folder is
either complete or absent (a refused command leaves nothing behind). The number of examples comes from
the hypothesis profile (tests/conftest.py): ``ci`` by default, ``--hypothesis-profile=long`` for 5,000.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import string
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tangentft.cli.main import app
from tangentft.io import LOCK

runner = CliRunner()
WORDS = "good bad movie film great awful plot actor boring fun dull superb weak story".split()


@pytest.fixture(scope="module", autouse=True)
def fast_tiny_models():
    """The tiny registry models built once and copied per command, and run figures not rendered: the
    properties are about input handling, and building/plotting would cost seconds per example."""
    from tangentft.models import registry
    from tangentft.train import run

    cache: dict = {}

    def cached(entry):
        def load(seed: int = 0, attn_implementation: str = "eager", **_):
            key = (entry.name, seed, attn_implementation)
            if key not in cache:
                cache[key] = entry.load(seed=seed, attn_implementation=attn_implementation)
            return copy.deepcopy(cache[key])

        return load

    with pytest.MonkeyPatch.context() as mp:
        for name in ("tiny-llama", "tiny-bert"):
            mp.setitem(registry.REGISTRY, name, replace(registry.REGISTRY[name], load=cached(registry.REGISTRY[name])))
        mp.setattr(run, "plot_run", lambda metrics, fig_dir: [])
        yield


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("task")
    rows = ["label\tsentence"] + [f"{i % 2}\t{' '.join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 4))}"
                                  for i in range(12)]
    (folder / "train.tsv").write_text("\n".join(rows) + "\n")
    (folder / "test.tsv").write_text("\n".join(rows[:7]) + "\n")
    return folder


def invoke(args: list) -> tuple[int, str]:
    """Run the CLI in-process; fail the example on any exception that is not a clean exit."""
    res = runner.invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"traceback for {args}: {res.exception!r}\n{res.output}") from res.exception
    assert res.exit_code in (0, 2), (args, res.exit_code, res.output)
    event(f"exit {res.exit_code}")
    if res.exit_code == 2 and not res.output.startswith("Usage:"):  # Typer's usage errors keep their format
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, res.output
    return res.exit_code, res.output


# -- task files ----------------------------------------------------------------------------------------------
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
cell = st.one_of(text, st.sampled_from(["0", "1", "2", "7", "-1", "1.5", "5.0", "7.5", "nan", "inf", "", " ", "x"]),
                 st.integers(-3, 12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr))
header = st.lists(st.sampled_from(["label", "score", "sentence", "sentence1", "sentence2", "Label", "text", "id"]),
                  min_size=1, max_size=4)


@st.composite
def task_files(draw):
    cols = draw(header)
    rows = draw(st.lists(st.lists(cell, min_size=len(cols) - 1, max_size=len(cols) + 1), max_size=8))
    kind = draw(st.sampled_from(["tsv", "csv", "jsonl"]))
    if kind == "jsonl":
        objs = [dict(zip(cols, r, strict=False)) for r in rows]
        body = "\n".join(json.dumps(o) if draw(st.booleans()) else repr(o) for o in objs)
    else:
        sep = "\t" if kind == "tsv" else ","
        body = "\n".join(sep.join(r) for r in [cols, *rows])
    name = draw(st.sampled_from(["train", "dev", "test", "stsb", "sst2", "other"]))
    return kind, name, body


@given(task=task_files(), num_labels=st.one_of(st.none(), st.integers(-1, 9)),
       score_range=st.one_of(st.none(), st.sampled_from(["0,5", "5,0", "1", "a,b", "-inf,inf", "0,10"])))
def test_task_files_are_read_or_refused_in_one_line(task, num_labels, score_range):
    kind, name, body = task
    folder = Path(tempfile.mkdtemp())
    try:
        path = folder / f"{name}.{kind}"
        path.write_text(body)
        args = ["data", "inspect", path]
        if num_labels is not None:
            args += ["--num-labels", num_labels]
        if score_range is not None:
            args += ["--score-range", score_range]
        invoke(args)
    finally:
        shutil.rmtree(folder)


# -- selection specs -------------------------------------------------------------------------------------------
def usually(common, edge):
    """``common`` about three times in four, else ``edge`` (hypothesis favours small integers: 0 is common)."""
    return st.integers(0, 3).flatmap(lambda i: edge if i == 3 else common)


roles = usually(st.sampled_from(["q", "k", "v", "o", "gate", "up", "down", "attn", "mlp", "all", "norm", "head"]),
                st.sampled_from(["embed", "banana", "Q", "", " q"]))
layers = usually(st.sampled_from(["", "@0", "@1", "@all", "@0-1", "@::2", "@0,1", "@1:"]),
                 st.one_of(st.sampled_from(["@1-0", "@5-2", "@7", "@-1", "@1:0", "@x", "@", "@0-", "@::0"]),
                           st.integers(-2, 4).map(lambda i: f"@{i}")))
lora_opts = usually(st.sampled_from(["", "", "lora:", "lora(r=2):", "lora(r=2,alpha=4):"]),
                    st.sampled_from(["lora(r=0):", "lora(r=8,foo=1):", "lora(r=x):", "lora(r):", "lora(alpha=1.5):"]))
parts = usually(st.sampled_from(["", "", ".weight"]), st.sampled_from([".bias", ".A", ".B", ".C"]))


@st.composite
def specs(draw):
    terms = []
    for _ in range(draw(st.integers(1, 2))):
        targets = ",".join(draw(st.lists(roles, min_size=1, max_size=2)))
        terms.append(draw(lora_opts) + targets + draw(layers) + draw(parts))
    spec = ";".join(terms)
    garbage = draw(st.integers(0, 7))  # about one example in four is free text, or a spec with junk appended
    if garbage == 7:
        return draw(st.text(alphabet=string.printable, max_size=16))
    return spec + draw(text) if garbage == 6 else spec


@given(spec=specs(), groups=st.one_of(st.none(), st.sampled_from(["layer", "role", "banana", "q@0;v", "q@5-2", ""])),
       model=st.sampled_from(["tiny-llama", "tiny-bert"]))
def test_selection_specs_compute_a_kernel_or_are_refused(task_dir, spec, groups, model):
    out = Path(tempfile.mkdtemp()) / "kernel"
    try:
        args = ["ntk", "--model", model, "--task", task_dir, "--params", spec, "--n", 2, "--out", out]
        if groups is not None:
            args += ["--groups", groups]
        code, _ = invoke(args)
        if code == 0:
            assert {"kernel.json", "kernel.safetensors", "summary.json"} <= {p.name for p in out.iterdir()}
        else:
            assert not out.exists()
    finally:
        shutil.rmtree(out.parent)


# -- numeric options -------------------------------------------------------------------------------------------
weird_real = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
                       st.sampled_from(["0", "-1", "1e10", "1e30", "inf", "-inf", "nan", "1", "2", "x"]))
# Numeric extremes (issue 25): integers past 64 bits, either sign; floats past the double range, or -0.
huge_int = st.sampled_from(["99999999999999999999999", "-99999999999999999999999", str(2**63), str(2**63 - 1)])
weird_int = st.one_of(st.integers(-3, 0).map(str), st.sampled_from(["1.5", "x", "99999999999999999999"]), huge_int)
weird_real = st.one_of(weird_real, st.sampled_from(["1e400", "-1e400", "-0", "1e-400"]))
# Each option's usual values (a tiny run finishes in about a second) and the values that probe its edges.
OPTIONS = {
    "--lr": (st.sampled_from(["1e-4", "1e-3", "0.05"]), weird_real),
    "--lam": (st.sampled_from(["0", "0.1", "1"]), weird_real),
    "--weight-decay": (st.sampled_from(["0", "0.01"]), weird_real),
    "--warmup-ratio": (st.sampled_from(["0", "0.06", "0.5"]), weird_real),
    "--val-fraction": (st.sampled_from([None, "0.25", "0.5"]), weird_real),
    "--max-steps": (st.sampled_from([None, "1", "2", "3"]), weird_int),
    "--epochs": (st.sampled_from(["1", "2"]), weird_int),
    "--batch-size": (st.sampled_from(["1", "3", "4"]), weird_int),
    "--grad-accum": (st.sampled_from(["1", "2"]), weird_int),
    "--n-train": (st.sampled_from([None, "2", "5", "8"]), weird_int),
    "--n-eval": (st.sampled_from(["0", "3"]), st.sampled_from(["-1", "x"])),
    "--eval-every": (st.sampled_from([None, "1", "2"]), weird_int),
    "--early-stop": (st.sampled_from(["0", "1"]), st.sampled_from(["-1", "x"])),
    "--seed": (st.sampled_from(["0", "1"]), st.one_of(huge_int, st.sampled_from(["-1", "x"]))),
}
# Options that act only through another one (issue 25): given alone, each must be refused, never recorded.
PAIRED = {"--reg-per-element": [], "--predict-n": ["4"]}


@st.composite
def numeric_options(draw):
    """All options at usual values but up to two (drawn) at edge values, so about a third of the runs train."""
    broken = draw(st.sets(st.sampled_from(sorted(OPTIONS)), max_size=2))
    args = []
    for flag, (usual, edge) in OPTIONS.items():
        value = draw(edge if flag in broken else usual)
        if value is not None:
            args += [flag, value]
    if draw(st.integers(0, 5)) == 5:  # now and then, an option without the one it needs
        flag = draw(st.sampled_from(sorted(PAIRED)))
        args += [flag, *PAIRED[flag]]
    return args


@given(options=numeric_options(), method=st.sampled_from(["lora", "full", "linearized"]),
       reg=st.sampled_from(["none", "l2", "selective"]))
def test_numeric_options_train_or_are_refused(task_dir, options, method, reg):
    out = Path(tempfile.mkdtemp()) / "run"
    try:
        args = ["train", "-m", "tiny-llama", "-t", task_dir, "--method", method, "--params",
                "lora(r=2):q@0" if method != "full" else "q@0", "--reg", reg, "--probe-size", 2, *options, "--out", out]
        code, _ = invoke(args)
        if code == 0:
            names = {p.name for p in out.iterdir()}
            assert {"config.json", "summary.json", "summary.md", "metrics.jsonl", "checkpoint.safetensors"} <= names
            assert "adapter" in names or "trained.safetensors" in names
        else:
            assert not out.exists()
    finally:
        shutil.rmtree(out.parent)


# -- run folders: concurrent writers and full disks (issue 25) -----------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(task_dir, tmp_path_factory) -> Path:
    """A finished 2-step LoRA run to resume, overwrite or write beside."""
    out = tmp_path_factory.mktemp("finished") / "run"
    res = runner.invoke(app, [str(a) for a in ["train", "-m", "tiny-llama", "-t", task_dir, "--params", "lora(r=2):q@0",
                                               "--max-steps", 2, "--n-eval", 3, "--probe-size", 2, "--out", out]])
    assert res.exit_code == 0, res.output
    return out


def _fill(disk: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on the file system of ``disk``."""
    st_ = os.statvfs(disk)
    free = st_.f_bavail * st_.f_frsize
    if free > leave:
        with open(disk / "filler", "wb") as fh:
            fh.write(b"\0" * (free - leave))


@contextlib.contextmanager
def _disk(kind: str, monkeypatch_ctx):
    """A folder on a roomy disk, or on a full one: a 256 kB tmpfs filled up to a few kB where this machine lets us
    mount one, else every safetensors write failing with ENOSPC."""
    root = Path(tempfile.mkdtemp())
    mounted = False
    try:
        if kind == "full":
            try:
                mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)],
                                         capture_output=True).returncode == 0
            except OSError:  # no mount command here: ENOSPC is simulated below
                mounted = False
            if not mounted:
                from safetensors import SafetensorError
                from safetensors import torch as st_torch

                def enospc(*_a, **_k):
                    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

                monkeypatch_ctx.setattr(st_torch, "save_file", enospc)
        yield root, mounted
    finally:
        if mounted:  # lazily: tensors loaded from the checkpoint may still map its file until collected
            subprocess.run(["umount", "-l", str(root)], check=True)
        shutil.rmtree(root, ignore_errors=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != LOCK}


@settings(max_examples=max(8, settings.default.max_examples // 5))
@given(command=st.sampled_from(["fresh", "overwrite", "resume"]), locked=st.booleans(),
       disk=st.sampled_from(["roomy", "roomy", "full"]), leave=st.sampled_from([0, 8192, 32768]))
def test_a_run_folder_is_never_shared_nor_left_half_written(task_dir, finished_run, command, locked, disk, leave):
    """Whatever runs into a folder another process holds, or onto a full disk: exit 0 or 2 with one error line, a
    held folder is left exactly as it was, a refused fresh run leaves nothing, and a refused resume keeps a
    checkpoint that still resumes."""
    from tangentft.io import check_safetensors, folder_lock

    with pytest.MonkeyPatch.context() as mp, _disk(disk, mp) as (root, mounted):
        out = root / "run"
        if command != "fresh":
            shutil.copytree(finished_run, out)
        if mounted:
            _fill(root, leave)
        before = _files(out) if out.exists() else {}
        args = {"fresh": ["train", "-m", "tiny-llama", "-t", task_dir, "--params", "lora(r=2):q@0", "--max-steps", 2,
                          "--n-eval", 3, "--probe-size", 2, "--out", out],
                "overwrite": ["train", "-m", "tiny-llama", "-t", task_dir, "--method", "full", "--params", "q@0",
                              "--max-steps", 2, "--n-eval", 3, "--probe-size", 2, "--overwrite", "--out", out],
                "resume": ["train", "--resume", out, "--max-steps", 3]}[command]
        if locked:
            out.mkdir(exist_ok=True)
            with folder_lock(out):
                code, output = invoke(args)
            assert code == 2 and f"{out} is in use by another tangentft process (pid {os.getpid()})" in output, output
            assert _files(out) == before
            return
        code, output = invoke(args)
        event(f"{command} on a {disk} disk: exit {code}")
        if code == 0:
            assert {"config.json", "summary.json", "checkpoint.safetensors"} <= {p.name for p in out.iterdir()}
        elif command == "fresh":
            assert not out.exists(), output
        elif command == "resume":
            assert set(before) <= set(_files(out)), output
            check_safetensors(out / "checkpoint.safetensors")
        else:  # overwrite replaces the old run as a whole once the new one has loaded: a failure leaves neither
            assert not out.exists() or _files(out) == before, output
