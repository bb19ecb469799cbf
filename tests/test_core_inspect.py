"""Hardening of ``cnnlab summary`` and ``cnnlab zoo``: receptive fields never larger than the input,
no rows for layers that compute nothing, training-only heads counted apart, aliases shown."""
import pytest
import torch
from torch import nn

from cnnlab import inspect, models
from cnnlab.inspect import summary


def meta(name, **kw):
    with torch.device("meta"):
        return models.create(name, **kw)


def test_vgg16_fully_connected_layers_see_the_whole_input_not_more():
    s = summary(meta("vgg16"), (3, 224, 224))
    rows = {r.name: r for r in s.rows}
    assert all(r.receptive_field is None or max(r.receptive_field) <= 224 for r in s.rows)
    fc = [r for r in s.rows if r.type == "Linear"]
    assert fc and all(r.receptive_field == (224, 224) and s.field_text(r) == "whole input" for r in fc)
    # A conv layer keeps its own (clipped) size, not "whole input".
    assert s.field_text(rows["features.0"]) == "3x3"
    assert "whole input" in s.format()


def test_a_conv_whose_field_is_smaller_than_the_input_is_not_called_whole():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    s = summary(model, (1, 10, 10))
    assert s.rows[0].receptive_field == (3, 3)
    assert s.rows[-1].receptive_field == (10, 10) and s.field_text(s.rows[-1]) == "whole input"


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "se-resnet50"])
def test_resnet_summaries_have_no_empty_identity_rows(name):
    if name not in models.names(aliases=True):
        pytest.skip(f"{name} is not registered")
    entry = models.info(name)
    s = summary(meta(name), entry.input_size)
    assert not [r.name for r in s.rows if r.type == "Identity"]
    assert s.total_params == sum(r.params for r in s.rows)


def test_identity_modules_get_no_row_but_real_layers_do():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Identity(), nn.ReLU())
    s = summary(model, (1, 8, 8))
    assert [r.type for r in s.rows] == ["Conv2d", "ReLU"]


def test_googlenet_zoo_row_shows_the_papers_count_and_the_auxiliary_heads_apart():
    (row,) = inspect.zoo_table(["googlenet"])
    assert (row.params, row.published, row.aux_params) == (6_998_552, 6_998_552, 6_379_728)
    assert models.info("googlenet").params == 6_998_552 + 6_379_728  # the registry's full count stays
    text = inspect.format_zoo([row])
    assert "6,998,552" in text and "+6,379,728 in training-only auxiliary heads" in text
    assert "13,378,280" not in text


def test_zoo_shows_aliases_and_accepts_them():
    (row,) = inspect.zoo_table(["vgg16"])
    entry = models.info("vgg16")
    assert row.name == entry.name and "vgg16" in (row.name, *row.aliases)
    text = inspect.format_zoo([row])
    assert "vgg16" in text and entry.name in text
    assert row.params == row.published == 138_357_544
