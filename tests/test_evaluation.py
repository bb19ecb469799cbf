"""Evaluation as the lectures evaluate: TTA views, ensembles, top-k, the confusion matrix, saved runs."""
import pytest
import torch
from torch import nn

from cnnlab.data import Dataset
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, evaluate_checkpoint, fit
from cnnlab.train.evaluation import (
    confusion_matrix,
    ensemble_proba,
    evaluate_runs,
    format_confusion,
    format_evaluation,
    metrics_from_proba,
    most_confused,
    plot_confusion,
    predict_proba,
    tta_views,
)
from conftest import tiny_dataset


def small_model(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, classes))


def random_batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def random_proba(n: int = 20, c: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(seed)), dim=1)


# --- TTA -------------------------------------------------------------------------------------

def test_tta_of_a_flip_invariant_batch_equals_the_plain_prediction():
    x = random_batch()
    x = (x + x.flip(-1)) / 2  # symmetric under a horizontal flip
    model, loader = small_model(), [(x, torch.zeros(len(x), dtype=torch.long))]
    plain = predict_proba(model, loader)
    torch.testing.assert_close(predict_proba(model, loader, tta="flip"), plain, atol=1e-7, rtol=0)


def test_tta_of_an_asymmetric_batch_differs_from_the_plain_prediction():
    model, loader = small_model(), [(random_batch(), torch.zeros(6, dtype=torch.long))]
    assert not torch.allclose(predict_proba(model, loader, tta="flip"), predict_proba(model, loader), atol=1e-4)


@pytest.mark.parametrize("mode,count", [("none", 1), ("flip", 2), ("crops", 5), ("10crop", 10)])
def test_tta_views_have_the_input_shape_and_the_right_count(mode, count):
    x = random_batch()
    views = tta_views(x, mode)
    assert len(views) == count
    assert all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x)


def test_crops_are_the_center_and_four_corners_of_the_zero_padded_image():
    x = random_batch()
    p = 2
    center, tl, tr, bl, br = tta_views(x, "crops", pad=p)
    assert torch.equal(center, x)
    assert torch.equal(tl[..., p:, p:], x[..., :-p, :-p]) and tl[..., :p, :].abs().sum() == 0
    assert torch.equal(tr[..., p:, :-p], x[..., :-p, p:]) and tr[..., :, -p:].abs().sum() == 0
    assert torch.equal(bl[..., :-p, p:], x[..., p:, :-p]) and bl[..., -p:, :].abs().sum() == 0
    assert torch.equal(br[..., :-p, :-p], x[..., p:, p:]) and br[..., :, -p:].abs().sum() == 0


def test_10crop_is_the_five_crops_and_their_mirrors():
    x = random_batch()
    crops, ten = tta_views(x, "crops"), tta_views(x, "10crop")
    for i in range(5):
        assert torch.equal(ten[i], crops[i])
        assert torch.equal(ten[5 + i], crops[i].flip(-1))


def test_tta_views_keep_channels_last():
    x = random_batch().repeat(1, 3, 1, 1).contiguous(memory_format=torch.channels_last)
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in tta_views(x, "10crop"))


def test_tta_refuses_unknown_modes_and_pads_the_input_cannot_support():
    x = random_batch()  # 8x8
    with pytest.raises(CnnlabError, match="unknown test-time augmentation 'flips'; did you mean 'flip'"):
        tta_views(x, "flips")
    with pytest.raises(CnnlabError, match="0 < pad < 8 for 8x8 inputs; received pad=8"):
        tta_views(x, "10crop", pad=8)
    with pytest.raises(CnnlabError, match="received pad=0"):
        tta_views(x, "crops", pad=0)
    with pytest.raises(CnnlabError, match=r"\(B, C, H, W\)"):
        tta_views(x[0], "flip")
    with pytest.raises(CnnlabError, match="unknown test-time augmentation"):
        predict_proba(small_model(), [(x, None)], tta="5crop")


def test_predict_proba_rows_are_probabilities_and_the_mode_is_restored():
    model = small_model().train()
    loader = [(random_batch(seed=s), None) for s in range(3)]
    proba = predict_proba(model, loader, tta="10crop")
    assert proba.shape == (18, 4)
    torch.testing.assert_close(proba.sum(1), torch.ones(18))
    assert model.training


# --- ensembles and metrics --------------------------------------------------------------------

def test_ensemble_of_identical_members_equals_the_single_member():
    p = random_proba()
    torch.testing.assert_close(ensemble_proba([p, p, p]), p)
    torch.testing.assert_close(ensemble_proba([p, p], [0.9, 0.1]), p)


def test_ensemble_is_the_weighted_mean_with_weights_normalized():
    p, q = random_proba(seed=0), random_proba(seed=1)
    torch.testing.assert_close(ensemble_proba([p, q], [3, 1]), 0.75 * p + 0.25 * q)
    torch.testing.assert_close(ensemble_proba([p, q], [2, 2]), (p + q) / 2)
    torch.testing.assert_close(ensemble_proba([p, q]), (p + q) / 2)
    torch.testing.assert_close(ensemble_proba([p, q], [0, 5]), q)


@pytest.mark.parametrize("weights,message", [
    ([1.0], "2 weights; received 1"),
    ([0.5, -0.5], "non-negative"),
    ([0.0, 0.0], "not all be zero"),
    ([float("nan"), 1.0], "non-negative"),
])
def test_bad_ensemble_weights_are_refused(weights, message):
    with pytest.raises(CnnlabError, match=message):
        ensemble_proba([random_proba(), random_proba(seed=1)], weights)


def test_ensemble_refuses_no_members_and_mismatched_shapes():
    with pytest.raises(CnnlabError, match="at least one member"):
        ensemble_proba([])
    with pytest.raises(CnnlabError, match="same"):
        ensemble_proba([random_proba(c=5), random_proba(c=6)])


def test_metrics_from_proba_are_topk_and_the_nll_of_the_probabilities():
    proba = torch.tensor([[0.7, 0.2, 0.1, 0.0, 0.0, 0.0],
                          [0.1, 0.2, 0.3, 0.4, 0.0, 0.0],
                          [0.01, 0.05, 0.1, 0.2, 0.3, 0.34]])
    target = torch.tensor([0, 2, 0])
    m = metrics_from_proba(proba, target)
    assert m["top1"] == pytest.approx(1 / 3)
    assert m["top5"] == pytest.approx(2 / 3)  # sample 3's target is 6th
    assert m["loss"] == pytest.approx(-(torch.tensor([0.7, 0.3, 0.01]).double().log().mean().item()), rel=1e-6)


def test_metrics_loss_of_one_model_equals_its_cross_entropy():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(3))
    target = torch.arange(50) % 7
    m = metrics_from_proba(torch.softmax(logits, 1), target)
    assert m["loss"] == pytest.approx(nn.functional.cross_entropy(logits, target).item(), rel=1e-5)


# --- the confusion matrix --------------------------------------------------------------------

def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.6, target, torch.randint(0, 5, (200,), generator=g))
    cm = confusion_matrix(pred, target, 5)
    assert cm.dtype == torch.int64 and cm.shape == (5, 5)
    assert cm.sum() == 200
    assert cm.diagonal().sum() == (pred == target).sum()
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in zip(target.tolist(), pred.tolist()):
        expected[t, p] += 1
    assert torch.equal(cm, expected)


def test_confusion_matrix_refuses_out_of_range_labels():
    with pytest.raises(CnnlabError, match=r"\[0, 3\); received values from 0 to 3"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)


def test_most_confused_lists_off_diagonal_pairs_largest_first():
    cm = torch.tensor([[50, 2, 7],
                       [9, 40, 0],
                       [2, 30, 11]])
    assert most_confused(cm, ["a", "b", "c"], k=3) == [("c", "b", 30), ("b", "a", 9), ("a", "c", 7)]
    assert most_confused(cm, ["a", "b", "c"], k=10)[-2:] == [("a", "b", 2), ("c", "a", 2)]  # ties: row-major
    assert len(most_confused(cm, ["a", "b", "c"], k=10)) == 5  # the empty (b, c) cell is left out
    assert most_confused(torch.eye(3, dtype=torch.long), ["a", "b", "c"]) == []


def test_format_confusion_shows_names_counts_and_per_class_accuracy():
    cm = torch.tensor([[50, 2], [9, 1234]])
    text = format_confusion(cm, ["cat", "dog"])
    assert "0 cat" in text and "1 dog" in text and "1234" in text
    assert "96.2%" in text  # 50 / 52
    with pytest.raises(CnnlabError, match="3x3"):
        format_confusion(cm, ["a", "b", "c"])


def test_plot_confusion_writes_a_png(tmp_path):
    cm = torch.tensor([[5, 1], [2, 7]])
    plot_confusion(cm, ["a", "b"], tmp_path / "sub" / "cm.png", title="t")
    assert (tmp_path / "sub" / "cm.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]


# --- saved runs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny LeNet-5 runs on the tiny dataset (different seeds), and one on other data."""
    root = tmp_path_factory.mktemp("runs")
    tiny = tiny_dataset()
    for seed in (0, 1):
        fit(TrainConfig(epochs=1, seed=seed), root / f"r{seed}", dataset=tiny)
    small = dict(n_train=128, n_test=32)  # these two only need to exist
    fashion = tiny_dataset(**small, name="fashion-mnist")
    fit(TrainConfig(epochs=1, data="fashion-mnist", batch_size=64), root / "fashion", dataset=fashion)
    five = tiny_dataset(**small)
    five = Dataset("mnist", five.train_x, five.train_y % 5, five.test_x, five.test_y % 5,
                   tuple("abcde"), five.mean, five.std)
    fit(TrainConfig(epochs=1, batch_size=64), root / "five", dataset=five)
    return root


def test_a_single_run_scores_like_evaluate_checkpoint(runs, tiny):
    result = evaluate_runs([runs / "r0"], dataset=tiny)
    plain = evaluate_checkpoint(runs / "r0", dataset=tiny)
    (member,) = result["members"]
    assert member["top1"] == plain["test_top1"] and member["top5"] == plain["test_top5"]
    assert member["loss"] == pytest.approx(plain["test_loss"], rel=1e-4)
    assert "ensemble" not in result and result["weights"] == [1.0]
    cm = result["confusion"]
    assert cm.sum() == 128 and cm.diagonal().sum() == round(member["top1"] * 128)
    assert result["classes"] == list(tiny.classes)


def test_an_ensemble_of_runs_reports_members_and_the_weighted_ensemble(runs, tiny, tmp_path):
    from cnnlab.data import BatchLoader
    from cnnlab.train import load_model

    png = tmp_path / "cm.png"
    result = evaluate_runs([runs / "r0", runs / "r1"], dataset=tiny, tta="flip", weights=[3, 1],
                           batch_size=50, confusion_png=png)
    assert result["weights"] == [0.75, 0.25] and result["tta"] == "flip"
    assert [m["path"] for m in result["members"]] == [str(runs / "r0"), str(runs / "r1")]
    loader = BatchLoader(tiny.test_x, tiny.test_y, batch_size=128, shuffle=False, mean=tiny.mean, std=tiny.std)
    probas = [predict_proba(load_model(runs / r)[0], loader, tta="flip") for r in ("r0", "r1")]
    expected = metrics_from_proba(0.75 * probas[0] + 0.25 * probas[1], tiny.test_y)
    assert result["ensemble"] == pytest.approx(expected, rel=1e-5)
    pred = (0.75 * probas[0] + 0.25 * probas[1]).argmax(1)
    assert torch.equal(result["confusion"], confusion_matrix(pred, tiny.test_y, 10))
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = format_evaluation(result)
    assert "ensemble: top-1" in text and "weight 0.750" in text and "rows: true class" in text


def test_members_trained_on_different_data_are_refused(runs, tiny):
    with pytest.raises(CnnlabError, match=r"r0 was trained on mnist \(10 classes of 1x28x28\) but .*fashion on "
                                          r"fashion-mnist \(10 classes"):
        evaluate_runs([runs / "r0", runs / "fashion"], dataset=tiny)
    with pytest.raises(CnnlabError, match=r"mnist \(10 classes of 1x28x28\) but .*five on mnist \(5 classes"):
        evaluate_runs([runs / "r0", runs / "five"], dataset=tiny)


def test_evaluate_runs_refuses_bad_options_before_evaluating(runs, tiny):
    with pytest.raises(CnnlabError, match="unknown test-time augmentation"):
        evaluate_runs([runs / "r0"], dataset=tiny, tta="mirror")
    with pytest.raises(CnnlabError, match="2 weights; received 3"):
        evaluate_runs([runs / "r0", runs / "r1"], dataset=tiny, weights=[1, 1, 1])
    with pytest.raises(CnnlabError, match="at least one run"):
        evaluate_runs([], dataset=tiny)
    with pytest.raises(CnnlabError, match="'10crop' .* 0 < pad < 28 for 28x28 inputs; received pad=30"):
        evaluate_runs([runs / "r0"], dataset=tiny, tta="10crop", tta_pad=30)


# --- top losses -----------------------------------------------------------------------------

def test_top_losses_from_proba_ranks_by_the_loss_of_the_true_class():
    from cnnlab.inspect import top_losses, top_losses_from_proba

    proba = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    y = torch.tensor([0, 0, 1, 1])
    worst = top_losses_from_proba(proba, y, k=3)
    assert [t.index for t in worst] == [1, 2, 3]  # p(true) = 0.2, 0.4, 0.5
    assert worst[0].loss == pytest.approx(-torch.tensor(0.2).log().item())
    assert (worst[0].true, worst[0].predicted, worst[0].probability) == (0, 1, pytest.approx(0.8))
    # the same ranking as the model-based top_losses of the logits those probabilities come from
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(20, 1, 2, 2)
    labels = torch.randint(0, 2, (20,))
    with torch.no_grad():
        p = model(x).softmax(1)
    assert [t.index for t in top_losses_from_proba(p, labels, 5)] == [t.index for t in top_losses(model, x, labels, 5)]


def test_evaluate_runs_lists_the_top_losses_and_draws_them(runs, tiny, tmp_path):
    png = tmp_path / "grid" / "top.png"
    result = evaluate_runs([runs / "r0"], dataset=tiny, top_losses=5, top_losses_png=png)
    worst = result["top_losses"]
    assert len(worst) == 5 and [t["loss"] for t in worst] == sorted((t["loss"] for t in worst), reverse=True)
    # the highest loss of all 128 test images: no image outside the list has a larger one
    from cnnlab.train import load_model

    model, state = load_model(runs / "r0")
    x = (tiny.test_x.float() / 255 - state["dataset"]["mean"][0]) / state["dataset"]["std"][0]
    with torch.no_grad():
        losses = nn.functional.cross_entropy(model.eval()(x), tiny.test_y, reduction="none")
    assert worst[0]["index"] == int(losses.argmax())
    assert worst[0]["loss"] == pytest.approx(float(losses.max()), rel=1e-3)
    assert png.read_bytes()[:4] == b"\x89PNG"
    from cnnlab.train.evaluation import format_top_losses

    text = format_top_losses(result)
    assert text.splitlines()[2].split()[:2] == ["1", str(worst[0]["index"])]


@pytest.mark.parametrize("k", [0, 129])
def test_bad_top_losses_counts_are_refused_before_anything_is_written(runs, tiny, tmp_path, k):
    png = tmp_path / "top.png"
    with pytest.raises(CnnlabError, match="top losses must be"):
        evaluate_runs([runs / "r0"], dataset=tiny, top_losses=k, top_losses_png=png)
    assert not png.exists()


def test_format_confusion_labels_digit_classes_once():
    cm = torch.tensor([[7, 1], [0, 5]])
    lines = format_confusion(cm, ["0", "1"]).splitlines()
    rows = [line for line in lines[3:]]
    assert [r.split("|")[0].strip() for r in rows] == ["0", "1"]  # not "0 0", "1 1"
    assert lines[1].split("|")[1].split() == ["0", "1"]  # the columns: predicted class indices
    mixed = format_confusion(torch.eye(3, dtype=torch.long), ["0", "cat", "2"]).splitlines()
    assert [r.split("|")[0].strip() for r in mixed[3:]] == ["0", "1 cat", "2"]
