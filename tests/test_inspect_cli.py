"""``cnnlab inspect ...`` end to end on a run trained for one epoch on a tiny generated MNIST."""
import pytest

from cnnlab.cli import main
from cnnlab.data import datasets
from tests.conftest import make_images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run directory, data root): one tiny LeNet-5 run shared by this module's tests."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    xt, yt = make_images(512, 0)
    xs, ys = make_images(128, 1)
    datasets.write_cache(root / "mnist" / datasets.CACHE_FILE,  # a cache cnnlab trusts: no fetch, no network
                         {"train_x": xt[:, 0], "train_y": yt, "test_x": xs[:, 0], "test_y": ys})
    out = tmp_path_factory.mktemp("runs") / "lenet5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_DATA", str(root))
        assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    return out, root


@pytest.fixture
def env(run, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(run[1]))
    monkeypatch.chdir(tmp_path)
    return run[0]


def _one_error_line(capsys, message):
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("cnnlab")]) == 1


def test_filters_writes_png_and_gabor_csv_and_compares_with_init(env, tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["inspect", "filters", str(env), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"
    csv = out.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("filter,A,c1,c2,sigma,omega,theta,phi,b,r2") and len(csv) == 7
    assert "Gabor-like" in printed and "at initialization" in printed


def test_filters_of_a_deeper_layer_are_tiled(env, tmp_path, capsys):
    assert main(["inspect", "filters", str(env), "--layer", "features.3", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file() and not (tmp_path / "g.csv").exists()


def test_a_wrong_layer_lists_the_conv_layers_and_writes_nothing(env, tmp_path, capsys):
    assert main(["inspect", "filters", str(env), "--layer", "conv9", "--out", str(tmp_path / "x.png")]) == 2
    _one_error_line(capsys, "the conv layers are: features.0, features.3")
    assert not list(tmp_path.glob("x*"))


def test_activations_writes_one_row_per_conv_layer(env, tmp_path, capsys):
    assert main(["inspect", "activations", str(env), "--index", "3", "--out", str(tmp_path / "a.png")]) == 0
    printed = capsys.readouterr().out
    assert "features.0" in printed and "features.3" in printed and (tmp_path / "a.png").is_file()


def test_an_image_index_out_of_range_is_one_line(env, tmp_path, capsys):
    assert main(["inspect", "activations", str(env), "--index", "128", "--out", str(tmp_path / "a.png")]) == 2
    _one_error_line(capsys, "[0, 127]; received 128")
    assert not (tmp_path / "a.png").exists()


def test_a_run_whose_dataset_is_missing_says_which_files_to_put_where(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "empty"))
    assert main(["inspect", "activations", str(env), "--out", str(tmp_path / "a.png")]) == 2
    _one_error_line(capsys, "is not on this machine")
    assert not (tmp_path / "a.png").exists()


def test_saliency_writes_png_and_json_with_classes_and_sanity(env, tmp_path, capsys):
    import json

    out = tmp_path / "s.png"
    assert main(["inspect", "saliency", str(env), "--index", "0-1", "--sanity", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["index"] for r in result["images"]] == [0, 1] and out.is_file()
    assert result["sanity"][0]["layer"] == "(none)" and len(result["sanity"]) == 6
    assert "Spearman" in capsys.readouterr().out


def test_an_unknown_saliency_method_writes_nothing(env, tmp_path, capsys):
    assert main(["inspect", "saliency", str(env), "--method", "cam", "--out", str(tmp_path / "s.png")]) == 2
    _one_error_line(capsys, "unknown saliency method 'cam'")
    assert not list(tmp_path.iterdir())


def test_landscape_2d_writes_grid_csv_contour_and_surface(env, tmp_path, capsys):
    out = tmp_path / "land"
    assert main(["inspect", "landscape", str(env), "--grid", "3", "--subset", "64", "--out", str(out),
                 "--no-progress"]) == 0
    rows = (out / "landscape.csv").read_text().splitlines()
    assert rows[0] == "alpha,beta,loss,accuracy" and len(rows) == 10
    assert (out / "contour.png").is_file() and (out / "surface.png").is_file()
    assert "centre loss" in capsys.readouterr().out


def test_landscape_1d_plots_a_random_direction_and_init_to_trained(env, tmp_path, capsys):
    out = tmp_path / "line"
    assert main(["inspect", "landscape", str(env), "--dims", "1", "--steps", "3", "--subset", "32", "--out",
                 str(out), "--no-progress"]) == 0
    text = (out / "lines.csv").read_text()
    assert text.count("random,") == 3 and text.count("init-to-trained,") == 3 and (out / "lines.png").is_file()


def test_a_landscape_grid_too_large_is_refused_with_an_estimate_unless_forced(env, tmp_path, capsys, monkeypatch):
    from cnnlab.commands import inspect as cmd

    monkeypatch.setattr(cmd, "LANDSCAPE_LIMIT_S", 1e-6)
    out = tmp_path / "big"
    assert main(["inspect", "landscape", str(env), "--grid", "3", "--subset", "16", "--out", str(out)]) == 2
    _one_error_line(capsys, "a 3x3 grid on 16 images would take about")
    assert not out.exists()
    assert main(["inspect", "landscape", str(env), "--grid", "3", "--subset", "16", "--out", str(out), "--force",
                 "--no-progress"]) == 0


def test_equivariance_prints_the_table_and_writes_png_csv(env, tmp_path, capsys):
    out = tmp_path / "eq.png"
    assert main(["inspect", "equivariance", str(env), "--shifts", "1,2", "--limit", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "features.0" in printed and "prediction kept" in printed
    assert out.is_file() and out.with_suffix(".csv").read_text().startswith("layer,stride,shift,exact,error")


def test_dream_makes_one_image_per_class_with_its_confidence(env, tmp_path, capsys):
    import json

    out = tmp_path / "d.png"
    assert main(["inspect", "dream", str(env), "--classes", "0-2", "--steps", "5", "--out", str(out),
                 "--no-progress"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["index"] for r in result] == [0, 1, 2] and all(0 <= r["confidence"] <= 1 for r in result)
    assert main(["inspect", "dream", str(env), "--classes", "0-12", "--out", str(tmp_path / "e.png")]) == 2
    _one_error_line(capsys, "--classes must lie in [0, 9]")
    assert not (tmp_path / "e.png").exists()
