"""The registry: names, create, published count of the first models, and its errors."""
import pytest
from torch import nn

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register


def test_lenet5_has_the_lectures_61706_parameters():
    assert models.count_params(models.create("lenet5", num_classes=10)) == 61_706


def test_mlp_hidden_sizes_are_an_argument():
    m = models.create("mlp", hidden=(32,), num_classes=10)
    assert models.count_params(m) == 784 * 32 + 32 + 32 * 10 + 10


def test_names_lists_the_first_models():
    assert {"lenet5", "mlp"} <= set(models.names())


def test_unknown_model_suggests_close_names():
    with pytest.raises(CnnlabError, match="did you mean 'lenet5'"):
        models.create("lenet")


def test_unknown_argument_lists_accepted_ones():
    with pytest.raises(CnnlabError, match="does not accept argument 'depth'"):
        models.create("lenet5", depth=3)


@pytest.mark.parametrize("kw", [{"num_classes": 0}, {"in_channels": 0}, {"num_classes": 2.5}])
def test_non_positive_class_or_channel_counts_are_refused(kw):
    with pytest.raises(CnnlabError, match="positive integer"):
        models.create("lenet5", **kw)


def test_duplicate_registration_raises():
    with pytest.raises(RuntimeError, match="registered twice"):
        register("lenet5", family="x", paper="x", year=2000, input_size=(1, 28, 28))(lambda: nn.Identity())
