"""Training, evaluation and the model CLI on a tiny synthetic dataset (real generator, tiny net)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from research.evaluate import evaluate_folder, write_reports
from research.layout import list_folder
from research.synth.generate import generate_dataset
from research.train import TrainOptions, train_model
from research.training.data import load_folder, stratified_split
from shared.labels import CLASSES
from worker.model import load_model

NAME = "tiny-trained"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 32, seed=5, size=128, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def model_dir(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    train_model(TrainOptions(data=dataset, out=out, epochs=1, batch_size=8, val_fraction=0.25,
                             seed=3, input_size=64, name=NAME, tiny=True, progress=False))
    return out


def test_folder_listing_and_split(dataset: Path) -> None:
    files, labels = list_folder(dataset)
    assert len(files) == 32 and sorted(set(labels.tolist())) == [0, 1, 2, 3]
    assert all(f.parent.name == CLASSES[lab] for f, lab in zip(files, labels, strict=True))
    train, val = stratified_split(labels, 0.25, seed=1)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 32
    assert sorted(set(labels[val].tolist())) == [0, 1, 2, 3]  # every class validated
    loaded = load_folder(dataset, 64, workers=1)
    assert loaded.images.shape == (32, 64, 64) and loaded.images.dtype.name == "uint8"
    assert loaded.masks is not None and loaded.masks.shape == (32, 64, 64)
    has_lesion = loaded.masks.reshape(32, -1).max(axis=1) > 127
    assert has_lesion.tolist() == (labels != CLASSES.index("notumor")).tolist()


def test_training_writes_a_loadable_card(model_dir: Path, dataset: Path) -> None:
    model = load_model(model_dir, NAME)
    card = model.card
    assert card["training"]["n_train"] == 24 and card["training"]["n_validation"] == 8
    assert card["training"]["data_source"]["params"] == {"n_images": 32, "seed": 5, "size": 128}
    assert card["training"]["epochs_run"] == 1
    # The cosine schedule ran to its end: the last step's rate is (nearly) zero.
    assert 0.0 <= card["training"]["final_learning_rate"] < 0.05 * 3e-3
    assert 0.05 <= card["temperature"] <= 20.0
    val = card["metrics"]["validation"]
    assert val["n"] == 8 and 0.0 <= val["accuracy"] <= 1.0
    assert val["nll_after_t"] <= val["nll_before_t"] + 1e-9  # T is fitted to minimise NLL


def test_evaluation_report(model_dir: Path, dataset: Path, tmp_path: Path) -> None:
    report = evaluate_folder(dataset, model_dir, name=NAME, update_card=True, with_ood=False)
    cls, loc = report["classification"], report["localisation"]
    assert cls["n"] == 32
    assert sum(map(sum, cls["confusion_matrix"]["counts"])) == 32
    assert set(cls["per_class"]) == set(CLASSES)
    assert 0.0 <= cls["ece_after_t"] <= 1.0 and 0.0 <= cls["accuracy"] <= 1.0
    assert loc["n_with_mask"] == 24  # every tumour image has a mask, notumor none
    assert 0.0 <= loc["pointing_game"] <= loc["pointing_game_tolerant"] <= 1.0
    assert 0.0 <= loc["energy_inside_lesion"] <= 1.0
    assert 0.0 <= report["gate"]["false_reject_rate"] <= 1.0
    card = load_model(model_dir, NAME).card  # the weights hash still matches after the update
    assert card["metrics"]["test"]["accuracy"] == report["summary"]["accuracy"]
    jpath, mpath = write_reports(report, tmp_path / "eval")
    assert json.loads(jpath.read_text())["summary"] == report["summary"]
    md = mpath.read_text()
    assert "| accuracy |" in md and "Confusion matrix" in md and "pointing game" in md
    goals = report["goals"]
    assert set(goals) == {"accuracy", "pointing_game", "ece_after_t"}
    assert goals["accuracy"]["met"] == (report["summary"]["accuracy"] >= 0.98)
    assert goals["ece_after_t"]["met"] == (report["summary"]["ece_after_t"] <= 0.05)
    assert card["metrics"]["goals"] == goals and "## Goals" in md
    # Accuracy by what the generator drew, consistent with the overall figure.
    by = report["accuracy_by"]["groups"]
    assert sum(v["n"] for v in by["plane"].values()) == 32
    overall = sum(v["n"] * v["accuracy"] for v in by["plane"].values()) / 32
    assert overall == pytest.approx(cls["accuracy"])
    assert sum(v["n"] for v in by["glioma size"].values()) == 8
    assert set(by["meningioma site"]) <= {"convexity", "falx"}
    assert "## Accuracy by what the generator drew" in md


def test_predict_cli_prints_one_json_line_per_file(model_dir: Path, dataset: Path, tmp_path: Path) -> None:
    from cli.main import app

    files, _ = list_folder(dataset)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    result = CliRunner().invoke(app, ["predict", str(files[0]), str(files[-1]), str(not_an_image),
                                      "--model-dir", str(model_dir), "--name", NAME])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [line["file"] for line in lines] == [str(files[0]), str(files[-1]), str(not_an_image)]
    for line in lines[:2]:
        assert line["gate"]["accepted"] is True and line["gate"]["code"] == "ok"
        assert line["label"] in CLASSES
        assert set(line["probabilities"]) == set(CLASSES)
    assert lines[2]["label"] is None and lines[2]["error"]["code"] == "unsupported_media_type"


def test_train_cli_warm_restart_records_the_starting_weights(model_dir: Path, dataset: Path,
                                                              tmp_path: Path) -> None:
    from cli.main import app
    from worker.model.card import sha256_file

    start = model_dir / f"{NAME}.weights.h5"
    args = ["train", "--data", str(dataset), "--out", str(tmp_path), "--epochs", "1", "--batch-size", "8",
            "--val-fraction", "0.25", "--input-size", "64", "--name", "restarted", "--tiny",
            "--learning-rate", "0.0005", "--init-from", str(start)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    training = load_model(tmp_path, "restarted").card["training"]
    assert training["initial_weights"] == {"file": start.name, "sha256": sha256_file(start)}
    assert "0.0005" in training["optimizer"]

    missing = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "nope.weights.h5")])
    assert missing.exit_code != 0 and "--init-from" in missing.output


def test_progressive_resizing_trains_small_then_serves_full_size(dataset: Path, tmp_path: Path) -> None:
    from cli.main import app

    out = tmp_path / "m"
    args = ["train", "--data", str(dataset), "--out", str(out), "--epochs", "4", "--batch-size", "8",
            "--val-fraction", "0.25", "--input-size", "64", "--name", "prog", "--tiny",
            "--model-version", "2.0.0-test", "--low-res-share", "0.5", "--low-res-size", "32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load_model(out, "prog")
    training = model.card["training"]
    assert training["progressive_resizing"] == {"low_res_size": 32, "share": 0.5, "epochs_at_low_res": 2}
    assert training["epochs_run"] == 4 and len(training["history"]["loss"]) == 4
    assert model.input_size == 64  # the served network is the fixed-size one
    assert model.version == "2.0.0-test"  # the run names its model's version
    assert 0.0 <= training["final_learning_rate"] < 0.05 * 3e-3  # one schedule across both phases
    bad = CliRunner().invoke(app, [*args[:-1], "30"])
    assert bad.exit_code != 0 and "multiple of 8" in str(bad.exception)


def test_train_cli_on_two_folders_records_both(dataset: Path, tmp_path: Path) -> None:
    from cli.main import app
    from research.training.precision import cpu_has_bfloat16

    second = tmp_path / "second"
    generate_dataset(second, 16, seed=6, size=128, workers=1, progress=False)
    args = ["train", "--data", str(dataset), "--data", str(second), "--out", str(tmp_path / "m"),
            "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25", "--input-size", "64",
            "--name", "two", "--tiny"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "m", "two")
    training = model.card["training"]
    assert training["n_train"] + training["n_validation"] == 48
    assert training["data"] == [str(dataset), str(second)]
    assert [s["params"]["seed"] for s in training["data_source"]] == [5, 6]
    # "auto" trains in mixed bfloat16 where the CPU computes it natively; serving is float32.
    assert training["precision"].startswith("mixed bfloat16" if cpu_has_bfloat16() else "float32")
    assert {w.dtype for w in model.model.weights} == {"float32"}
    assert model.model.get_layer("logits").compute_dtype == "float32"
    assert model.model.get_layer("block3_1_conv").compute_dtype == "float32"
