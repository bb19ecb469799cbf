"""cnnlab.manual's activations, dropout, normalizations and losses against torch.nn.functional."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_grad import check_gradcheck, check_op, check_same_error

from cnnlab import manual
from cnnlab.manual import functional as MF

ACTIVATIONS = [
    (F.relu, MF.relu),
    (lambda x: F.leaky_relu(x, 0.2), lambda x: MF.leaky_relu(x, 0.2)),
    (torch.sigmoid, MF.sigmoid),
    (torch.tanh, MF.tanh),
]


@pytest.mark.parametrize("torch_fn, our_fn", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 5)])
def test_activations_match_torch(torch_fn, our_fn, shape):
    check_op([shape], torch_fn, our_fn)
    check_gradcheck([shape], our_fn)


def test_relu_gradient_at_zero_is_zero_like_torch():
    check_op([torch.tensor([-1.0, 0.0, 2.0])], F.relu, MF.relu)


def test_dropout_draws_the_same_mask_as_torch_for_the_same_seed():
    x = torch.randn(50, 40)
    torch.manual_seed(3)
    ours = MF.dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(ours, F.dropout(x, 0.3))


def test_inverted_dropout_keeps_the_expectation_and_routes_the_gradient_through_the_mask():
    torch.manual_seed(0)
    h = torch.full((200_000,), 2.0, requires_grad=True)
    out = MF.dropout(h, p=0.4)
    kept = out != 0
    assert abs(kept.double().mean().item() - 0.6) < 0.01
    assert torch.allclose(out[kept], torch.tensor(2.0 / 0.6))
    assert abs(out.mean().item() - 2.0) < 0.02  # E[h'] = h
    out.sum().backward()
    assert torch.equal(h.grad, kept / 0.6)  # δ flows only through the kept units, scaled the same


def test_dropout_is_the_identity_in_eval_and_zero_at_p_one():
    x = torch.randn(4, 5)
    assert MF.dropout(x, 0.5, training=False) is x
    assert torch.equal(MF.dropout(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 5), (3, 5, 6), (2, 5, 4, 3), (1, 5, 2, 2)])
def test_batch_norm_matches_torch_and_updates_running_stats_like_torch(training, shape):
    c = shape[1]
    ours_rm, ours_rv = torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5
    torch_rm, torch_rv = ours_rm.clone(), ours_rv.clone()
    check_op([shape, (c,), (c,)],
             lambda x, w, b: F.batch_norm(x, torch_rm, torch_rv, w, b, training=training, momentum=0.2),
             lambda x, w, b: MF.batch_norm(x, ours_rm, ours_rv, w, b, training=training, momentum=0.2),
             names=["input", "weight", "bias"], grad_atol=1e-9)
    assert torch.allclose(ours_rm, torch_rm, atol=1e-12)
    assert torch.allclose(ours_rv, torch_rv, atol=1e-12)  # the unbiased batch variance n/(n-1) σ²


def test_batch_norm_without_running_stats_or_affine_matches_torch():
    check_op([(6, 3, 2)], lambda x: F.batch_norm(x, None, None, training=True),
             lambda x: MF.batch_norm(x, None, None, training=True), grad_atol=1e-9)
    check_gradcheck([(4, 3, 2, 2), (3,), (3,)], lambda x, w, b: MF.batch_norm(x, None, None, w, b, training=True))


def test_batch_norm_with_one_value_per_channel_raises_like_torch():
    x = torch.randn(1, 3)
    check_same_error(lambda: F.batch_norm(x, None, None, training=True),
                     lambda: MF.batch_norm(x, None, None, training=True))
    check_same_error(lambda: F.batch_norm(torch.randn(2, 3), torch.zeros(4), torch.ones(4)),
                     lambda: MF.batch_norm(torch.randn(2, 3), torch.zeros(4), torch.ones(4)))


@pytest.mark.parametrize("shape, normalized", [((4, 6), (6,)), ((2, 3, 4, 5), (4, 5)), ((2, 3, 4), (2, 3, 4))])
def test_layer_norm_matches_torch(shape, normalized):
    check_op([shape, normalized, normalized], lambda x, w, b: F.layer_norm(x, normalized, w, b),
             lambda x, w, b: MF.layer_norm(x, normalized, w, b), names=["input", "weight", "bias"], grad_atol=1e-9)
    check_op([shape], lambda x: F.layer_norm(x, normalized), lambda x: MF.layer_norm(x, normalized), grad_atol=1e-9)
    check_gradcheck([shape, normalized, normalized], lambda x, w, b: MF.layer_norm(x, normalized, w, b))


def test_layer_norm_with_the_wrong_shape_raises_like_torch():
    check_same_error(lambda: F.layer_norm(torch.randn(2, 3), (4,)), lambda: MF.layer_norm(torch.randn(2, 3), (4,)))


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", [(2, 7, 3, 4), (2, 6, 5)])
def test_local_response_norm_matches_torch(size, shape):
    kw = {"size": size, "alpha": 0.5, "beta": 0.75, "k": 2.0}  # a large alpha so the neighbours matter
    check_op([shape], lambda x: F.local_response_norm(x, **kw), lambda x: MF.local_response_norm(x, **kw))
    check_gradcheck([shape], lambda x: MF.local_response_norm(x, **kw))


def test_local_response_norm_on_a_2d_input_raises_like_torch():
    check_same_error(lambda: F.local_response_norm(torch.randn(2, 3), 2),
                     lambda: MF.local_response_norm(torch.randn(2, 3), 2))


TARGETS = torch.tensor([0, 1, 3, 2, -100, 1])  # -100 is ignore_index


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(reduction, label_smoothing, weighted):
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64) if weighted else None
    kw = {"weight": weight, "reduction": reduction, "label_smoothing": label_smoothing}
    check_op([(6, 4), TARGETS], lambda z, t: F.cross_entropy(z, t, **kw), lambda z, t: MF.cross_entropy(z, t, **kw))


def test_cross_entropy_with_spatial_and_probability_targets_matches_torch():
    t = torch.randint(0, 4, (2, 3, 5), generator=torch.Generator().manual_seed(0))
    check_op([(2, 4, 3, 5), t], lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1),
             lambda z, t: MF.cross_entropy(z, t, label_smoothing=0.1))
    probs = torch.softmax(torch.randn(6, 4, dtype=torch.float64), dim=1)
    check_op([(6, 4)], lambda z: F.cross_entropy(z, probs, reduction="none"),
             lambda z: MF.cross_entropy(z, probs, reduction="none"))
    check_op([(4,), torch.tensor(2)], F.cross_entropy, MF.cross_entropy)  # unbatched


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([4, 0, 2])
    MF.cross_entropy(z, t, reduction="sum").backward()
    assert torch.allclose(z.grad, torch.softmax(z, 1) - F.one_hot(t, 5))
    check_gradcheck([(3, 5)], lambda z: MF.cross_entropy(z, t, label_smoothing=0.1))


def test_cross_entropy_bad_targets_raise_like_torch():
    z = torch.randn(2, 3)
    check_same_error(lambda: F.cross_entropy(z, torch.tensor([0, 1, 2])), lambda: MF.cross_entropy(z, torch.tensor([0, 1, 2])))
    check_same_error(lambda: F.cross_entropy(z, torch.tensor([0, 3])), lambda: MF.cross_entropy(z, torch.tensor([0, 3])))
    check_same_error(lambda: F.cross_entropy(z, torch.tensor([0, 1]), label_smoothing=1.5),
                     lambda: MF.cross_entropy(z, torch.tensor([0, 1]), label_smoothing=1.5))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch_for_input_and_target(reduction):
    check_op([(3, 4), (3, 4)], lambda a, b: F.mse_loss(a, b, reduction=reduction),
             lambda a, b: MF.mse_loss(a, b, reduction=reduction), names=["input", "target"])
    check_gradcheck([(3, 4), (3, 4)], lambda a, b: MF.mse_loss(a, b, reduction=reduction))


@pytest.mark.filterwarnings("ignore:Using a target size")
def test_mse_loss_broadcasts_like_torch_and_rejects_what_torch_rejects():
    check_op([(3, 4), (1, 4)], F.mse_loss, MF.mse_loss, names=["input", "target"])
    check_same_error(lambda: F.mse_loss(torch.randn(2, 3), torch.randn(3, 3)),
                     lambda: MF.mse_loss(torch.randn(2, 3), torch.randn(3, 3)))


@pytest.mark.parametrize("mode, train_scale, test_scale", [("inverted", 1 / 0.6, 1.0), ("scale-at-test", 1.0, 0.6)])
def test_both_dropout_conventions_keep_the_expected_activation_of_test_time(mode, train_scale, test_scale):
    # Hu, Deep Learning lecture 5, "Remarks": inverted dropout scales by 1/(1-p) in training,
    # the original form multiplies by (1-p) at test time; E[a_train] = a_test either way.
    torch.manual_seed(0)
    h = torch.full((200_000,), 2.0, requires_grad=True)
    layer = manual.Dropout(0.4, mode=mode)
    out = layer(h)
    kept = out != 0
    assert torch.allclose(out[kept], torch.tensor(2.0 * train_scale))
    layer.eval()
    test_out = layer(h)
    assert torch.allclose(test_out, torch.tensor(2.0 * test_scale))
    assert abs(out.mean().item() - test_out.mean().item()) < 0.02
    out.sum().backward()
    assert torch.equal(h.grad, kept * train_scale)  # δ only through the kept units, scaled alike


def test_scale_at_test_dropout_is_not_silently_turned_into_torch_dropout():
    from cnnlab.errors import CnnlabError

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), manual.Dropout(0.5, mode="scale-at-test"))
    with pytest.raises(CnnlabError, match="scale-at-test"):
        manual.to_torch(model)
    assert type(model[1]) is manual.Dropout  # nothing was changed
    with pytest.raises(CnnlabError, match="valid: inverted, scale-at-test"):
        manual.Dropout(0.5, mode="keep")
