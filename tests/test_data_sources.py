"""Task sources from the datasets world: save_to_disk folders, parquet files and hf:NAME[:CONFIG] ids, with
renamed columns and the same line-precise errors as the text formats."""

from __future__ import annotations

import sys
import types

import pytest
from typer.testing import CliRunner

from tangentft.data import load_task
from tangentft.errors import TangentError

ROWS = [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}", "stars": i % 2} for i in range(10)]
COLUMNS = {"sentence": "text", "label": "stars"}


def _dataset_dict(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                               "validation": datasets.Dataset.from_list(ROWS[8:])})
    dd.save_to_disk(str(tmp_path / "reviews"))
    return tmp_path / "reviews"


def test_save_to_disk_dataset_dict(tmp_path):
    task = load_task(_dataset_dict(tmp_path), columns=COLUMNS)
    assert set(task.splits) == {"train", "dev"} and len(task.split("train")) == 8
    assert task.spec.kind == "classification" and task.spec.num_outputs == 2
    assert task.split("train")[1].text == ROWS[1]["text"] and task.split("train")[1].label == 1
    assert task.source == str(tmp_path / "reviews") and task.spec.name == "reviews"


def test_save_to_disk_single_dataset_is_the_train_split(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"sentence": r["text"], "label": r["stars"]} for r in ROWS]).save_to_disk(
        str(tmp_path / "one"))
    task = load_task(tmp_path / "one")
    assert list(task.splits) == ["train"] and len(task.split("train")) == 10


def test_save_to_disk_missing_column_names_split_and_row(tmp_path):
    folder = _dataset_dict(tmp_path)
    with pytest.raises(TangentError, match=r"reviews\[train\]:0: missing column 'label'.*'text', 'stars'"):
        load_task(folder)


def test_parquet_file_with_renamed_columns_and_a_bad_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "reviews.parquet")
    task = load_task(tmp_path / "reviews.parquet", columns=COLUMNS)
    assert len(task.split("train")) == 10 and task.spec.num_outputs == 2
    bad = [{**r, "stars": str(r["stars"])} for r in ROWS]  # string labels parse, except one
    bad[2]["stars"] = "two"
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(TangentError, match=r"bad\.parquet:3: label 'two'"):
        load_task(tmp_path / "bad.parquet", columns=COLUMNS)
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(TangentError, match=r"torn\.parquet: not a readable parquet file"):
        load_task(tmp_path / "torn.parquet")


def test_folder_of_parquet_splits(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t").mkdir()
    rows = [{"sentence": r["text"], "label": r["stars"]} for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows[:8]), tmp_path / "t" / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[8:]), tmp_path / "t" / "test.parquet")
    task = load_task(tmp_path / "t")
    assert len(task.split("train")) == 8 and len(task.split("test")) == 2


def test_hf_prefix_and_config(monkeypatch):
    import datasets

    calls = []
    train = datasets.Dataset.from_list(ROWS)  # built before the module is swapped out below

    def load_dataset(repo, config=None):
        calls.append((repo, config))
        return {"train": train}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = load_task("hf:someone/reviews:en", columns=COLUMNS)
    assert calls == [("someone/reviews", "en")] and task.source == "hf:someone/reviews:en"
    assert task.spec.name == "en" and len(task.split("train")) == 10


def test_unreachable_hub_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    def offline(repo, config=None):
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TangentError, match=r"^hf:stanfordnlp/imdb: the Hugging Face hub is not reachable"):
        load_task("hf:stanfordnlp/imdb")


def test_cli_text_and_label_columns(tmp_path):
    from tangentft.cli.main import app

    folder = _dataset_dict(tmp_path)
    res = CliRunner().invoke(app, ["data", "inspect", str(folder), "--text-column", "text", "--label-column", "stars"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "dev" in res.output
    res = CliRunner().invoke(app, ["data", "inspect", str(folder), "--text-column", "body"])
    assert res.exit_code == 2 and "missing column 'body'" in res.output


def test_training_reads_columns_from_its_config(tmp_path):
    import json

    from tangentft.train.config import TrainConfig, load_config
    from tangentft.train.run import run_training

    folder = _dataset_dict(tmp_path)
    cfg = TrainConfig(model="tiny-llama", task=str(folder), columns=COLUMNS, method="lora",
                      max_steps=1, batch_size=4, n_eval=2, probe_size=2, lr=1e-3)
    run_training(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["columns"] == COLUMNS
    assert load_config(tmp_path / "run").columns == COLUMNS
