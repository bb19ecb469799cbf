"""Class model visualization: the ascent raises the target's score from the mean image."""
import pytest
import torch
from torch import nn

from cnnlab import inspect
from cnnlab.errors import CnnlabError


def _net():
    # a linear scorer: class scores driven by different pixels (as in a trained net), so raising one
    # score does not raise the others with it, and no ReLU sits at its kink at the zero image
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Flatten(), nn.Linear(64, 3)).eval()


def test_class_model_raises_the_target_confidence_and_stays_a_valid_image():
    model = _net()
    mean, std = (0.2,), (0.3,)
    with torch.no_grad():
        start = model(torch.zeros(1, 1, 8, 8)).softmax(1)[0]
    for target in range(3):
        # no jitter: this scorer is not shift invariant (a fully connected layer on 8x8 pixels)
        image, conf = inspect.class_model(model, target, steps=30, jitter=0, blur=0.5, input_size=(1, 8, 8),
                                          mean=mean, std=std)
        assert image.shape == (1, 8, 8) and image.min() >= 0 and image.max() <= 1
        assert conf > start[target] + 0.2
        with torch.no_grad():
            again = model(((image - mean[0]) / std[0])[None]).softmax(1)[0, target]
        assert again == pytest.approx(conf, abs=1e-5)  # the reported confidence is the returned image's


def test_class_model_refuses_a_bad_target_and_steps():
    with pytest.raises(CnnlabError, match=r"\[0, 2\]; received 3"):
        inspect.class_model(_net(), 3, steps=1, input_size=(1, 8, 8))
    with pytest.raises(CnnlabError, match="at least 1 step"):
        inspect.class_model(_net(), 0, steps=0, input_size=(1, 8, 8))
