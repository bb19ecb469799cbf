"""Prediction on image files: the run's own preprocessing, class names, top-k, EMA weights, the CLI
and its bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import BatchLoader
from cnnlab.data.folder import ImageUnreadable, Preprocess, decode, load_folder
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, fit
from cnnlab.train.checkpoint import save_checkpoint
from cnnlab.train.engine import build_model
from cnnlab.train.predict import image_files, load_predictor
from conftest import tiny_dataset


def write_run(run: Path, *, model="lenet5", num_classes=3, input_size=(1, 28, 28), meta=None, ema=False,
              seed=0, channels_last=False) -> torch.nn.Module:
    """A checkpoint as the trainer writes it (weights untrained), with extra dataset metadata."""
    cfg = TrainConfig(model=model)
    torch.manual_seed(seed)
    net = build_model(cfg, num_classes, input_size)
    if channels_last:  # as the trainer saves models without batch norm
        net = net.to(memory_format=torch.channels_last)
    c = input_size[0]
    dataset = {"name": "folder:/somewhere", "num_classes": num_classes, "input_size": list(input_size),
               "mean": [0.5] * c, "std": [0.25] * c, **(meta or {})}
    state = {"model": net.state_dict(), "config": cfg.to_dict(), "dataset": dataset, "epoch": 1}
    if ema:
        torch.manual_seed(seed + 1)
        other = build_model(cfg, num_classes, input_size)
        state["ema"] = {"format": "cnnlab-ema/1", "decay": 0.9, "buffers": "average", "warmup": False,
                        "num_updates": 1, "weights": other.state_dict()}
    save_checkpoint(run / "best.pt", state)
    return net.eval()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """The synthetic digits written as PNG files in class folders, loaded as a folder, trained one epoch."""
    base = tmp_path_factory.mktemp("digits")
    tiny = tiny_dataset()
    for split, xs, ys in (("train", tiny.train_x, tiny.train_y), ("test", tiny.test_x, tiny.test_y)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            (base / "pics" / split / str(int(y))).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[0].numpy()).save(base / "pics" / split / str(int(y)) / f"{i:04d}.png")
    ds = load_folder(base / "pics", workers=0)
    assert torch.equal(ds.test_x[ds.test_y == 3][0], tiny.test_x[tiny.test_y == 3][0])  # sorted by class, then name
    summary = fit(TrainConfig(epochs=1, batch_size=32, eval_batch_size=128), base / "run", dataset=ds)
    return base, ds, summary


def test_predictions_on_image_files_equal_the_trained_model_on_the_test_tensors(folder_run):
    base, ds, summary = folder_run
    paths = sorted((base / "pics" / "test").rglob("*.png"))[:8]  # 0/*.png first, as the dataset holds them
    predictor = load_predictor(base / "run")
    assert predictor.classes == tuple(str(i) for i in range(10))
    loader = BatchLoader(ds.test_x[:8], ds.test_y[:8], batch_size=8, shuffle=False, mean=ds.mean, std=ds.std)
    (x, y), = loader
    with torch.no_grad():
        expected = torch.softmax(predictor.model(x), 1)
    torch.testing.assert_close(predictor.probabilities(paths), expected, rtol=1e-5, atol=1e-6)
    results = predictor.predict(paths, top_k=3)
    for r, p in zip(results, expected):
        assert len(r.top) == 3 and r.top[0][0] == int(p.argmax()) and r.top[0][1] == str(int(p.argmax()))
        assert r.top[0][2] == pytest.approx(float(p.max()), abs=1e-6)
        assert [q for _, _, q in r.top] == sorted([q for _, _, q in r.top], reverse=True)
    # the synthetic digits are learnable: after one epoch most of the test images are right
    (all_x, all_y), = BatchLoader(ds.test_x, ds.test_y, batch_size=1000, shuffle=False, mean=ds.mean, std=ds.std)
    with torch.no_grad():
        accuracy = (predictor.model(all_x).argmax(1) == all_y).float().mean().item()
    assert accuracy == pytest.approx(summary["test_top1"]) and accuracy > 0.5


def test_a_folder_run_applies_its_saved_preprocessing_and_class_names(tmp_path):
    pre = Preprocess((32, 32), 3, crop_pct=0.875)
    net = write_run(tmp_path / "run", model="resnet20", input_size=(3, 32, 32),
                    meta={"classes": ["cat", "dog", "emu"], "preprocess": pre.to_dict()})
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(photo)
    predictor = load_predictor(tmp_path / "run")
    assert predictor.classes == ("cat", "dog", "emu") and predictor.preprocess == pre
    x = torch.from_numpy(decode(photo, pre)).float()[None] / 255  # resize 60 -> 36.6, crop 32 x 32
    with torch.no_grad():
        expected = torch.softmax(net((x - 0.5) / 0.25), 1)
    torch.testing.assert_close(predictor.probabilities([photo]), expected)
    (r,) = predictor.predict([photo], top_k=10)  # k larger than the classes: all of them
    assert sorted(name for _, name, _ in r.top) == ["cat", "dog", "emu"]
    assert sum(p for _, _, p in r.top) == pytest.approx(1.0, abs=1e-5)


def test_ema_weights_are_used_when_asked_and_refused_when_absent(tmp_path):
    write_run(tmp_path / "with", ema=True)
    write_run(tmp_path / "without")
    img = tmp_path / "a.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(img)
    own = load_predictor(tmp_path / "with").probabilities([img])
    averaged = load_predictor(tmp_path / "with", weights="ema").probabilities([img])
    assert not torch.allclose(own, averaged)
    with pytest.raises(CnnlabError, match="holds no EMA weights"):
        load_predictor(tmp_path / "without", weights="ema")


def test_folders_are_searched_for_images_in_sorted_order(tmp_path):
    for name in ("b.png", "a.JPG", "sub/c.png", ".hidden/d.png", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files([tmp_path])] == ["a.JPG", "b.png", "sub/c.png"]


def test_bad_input_to_predict_is_one_clear_error(tmp_path):
    write_run(tmp_path / "run")
    text = tmp_path / "readme.txt"
    text.write_text("not an image")
    predictor = load_predictor(tmp_path / "run")
    with pytest.raises(ImageUnreadable, match=r"cannot decode the image .*readme.txt"):
        predictor.predict([text])
    with pytest.raises(CnnlabError, match="no such image file or folder"):
        image_files([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="holds no images"):
        image_files([tmp_path / "empty"])
    with pytest.raises(CnnlabError, match="top-k must be at least 1"):
        predictor.predict([text], top_k=0)
    with pytest.raises(CnnlabError, match="unknown weights"):
        load_predictor(tmp_path / "run", weights="swa")


def test_cli_predict_prints_lines_or_json(tmp_path, capsys):
    write_run(tmp_path / "run", meta={"classes": ["cat", "dog", "emu"]})
    for i in range(2):
        Image.fromarray(np.full((40, 30), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "0.png"), str(tmp_path / "1.png"),
                 "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / '0.png'}: ") and lines[0].count("%") == 2
    assert main(["predict", str(tmp_path / "run"), str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["checkpoint"].endswith("best.pt") and len(doc["predictions"]) == 2
    top = doc["predictions"][0]["top"]
    assert len(top) == 3 and {t["class"] for t in top} == {"cat", "dog", "emu"}


@pytest.mark.parametrize("argv, message", [
    (["predict", "RUN", "notes.txt"], "cannot decode the image"),
    (["predict", "RUN", "missing.png"], "no such image file or folder"),
    (["predict", "nowhere", "ok.png"], "no such checkpoint or run directory"),
    (["predict", "RUN", "ok.png", "--top-k", "0"], "--top-k must be at least 1"),
    (["predict", "RUN", "ok.png", "--weights", "ema"], "holds no EMA weights"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "RUN")
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "ok.png")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
