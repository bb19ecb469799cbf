"""Networks written as layer lists: reading, checking, the per-layer table and the built module."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab import spec
from cnnlab.errors import CnnlabError
from cnnlab.models import count_params

ROOT = Path(__file__).resolve().parents[1]


def conv(sx, filters, stride=1, pad=0, **kw):
    return {"type": "conv", "sx": sx, "filters": filters, "stride": stride, "pad": pad, **kw}


def net(*layers, side=28, depth=1, classes=10):
    return [{"type": "input", "out_sx": side, "out_sy": side, "out_depth": depth}, *layers,
            {"type": "softmax", "num_classes": classes}]


# --- the shipped specs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["convnetjs-mnist", "convnetjs-cifar10"])
def test_shipped_specs_are_the_repository_copies(name):
    shipped = spec.bundled()[name]
    assert json.loads(shipped.read_text()) == json.loads((ROOT / "specs" / f"{name}.json").read_text())


def test_convnetjs_mnist_spec_is_the_lecture_listing():
    layers = spec.load("convnetjs-mnist")
    assert layers == [
        {"type": "input", "out_sx": 24, "out_sy": 24, "out_depth": 1},
        {"type": "conv", "sx": 5, "filters": 8, "stride": 1, "pad": 2, "activation": "relu"},
        {"type": "pool", "sx": 2, "stride": 2},
        {"type": "conv", "sx": 5, "filters": 16, "stride": 1, "pad": 2, "activation": "relu"},
        {"type": "pool", "sx": 3, "stride": 3},
        {"type": "softmax", "num_classes": 10},
    ]


def test_convnetjs_cifar10_spec_is_the_lecture_listing():
    layers = spec.load(ROOT / "specs" / "convnetjs-cifar10.json")
    assert [layer["type"] for layer in layers] == ["input", "conv", "pool", "conv", "pool", "conv", "pool", "softmax"]
    assert [layer["filters"] for layer in layers if layer["type"] == "conv"] == [16, 20, 20]
    assert layers[0] == {"type": "input", "out_sx": 32, "out_sy": 32, "out_depth": 3}
    assert all(layer == {"type": "pool", "sx": 2, "stride": 2} for layer in layers if layer["type"] == "pool")


def test_convnetjs_mnist_table_has_the_lecture_formulas_and_the_model_has_its_parameters():
    layers = spec.load("convnetjs-mnist")
    t = spec.table(layers, (1, 28, 28), 10)
    rows = t["rows"]
    assert [r["output"] for r in rows] == [[1, 24, 24], [8, 24, 24], [8, 12, 12], [16, 12, 12], [16, 4, 4], [10]]
    assert rows[1]["size_formula"] == "⌊(24 − 5 + 2·2)/1 + 1⌋ = 24"
    assert rows[1]["params_formula"] == "5²·1·8 + 8 = 208"
    assert rows[4]["size_formula"] == "⌊(12 − 3 + 2·0)/3 + 1⌋ = 4"
    assert "cropped to 24×24" in rows[0]["size_formula"]
    assert all(r["fits"] for r in rows) and t["error"] is None
    model = spec.build(layers, input_size=(1, 28, 28), num_classes=10)
    assert count_params(model) == t["total_params"] == 208 + 3216 + 2570
    assert [count_params(m) for m in model.layers] == [r["params"] for r in rows]


def test_lecture_lenet_conv_formula():
    rows = spec.table(net(conv(5, 6, pad=2, activation="relu")))["rows"]
    assert rows[1]["size_formula"] == "⌊(28 − 5 + 2·2)/1 + 1⌋ = 28"
    assert rows[1]["params_formula"] == "5²·1·6 + 6 = 156"


# --- sizes agree with PyTorch ----------------------------------------------------------------------

@pytest.mark.parametrize("layers,side", [
    ([conv(3, 4, stride=2, pad=1), {"type": "pool", "sx": 3, "stride": 2, "pad": 1, "kind": "avg"}], 17),
    ([conv(7, 5, stride=2, pad=3, floor=True), {"type": "bn"}, {"type": "relu"}, {"type": "lrn", "n": 3}], 32),
    ([{"type": "residual", "filters": 8, "stride": 2, "floor": True}, {"type": "residual", "filters": 8}], 16),
    ([{"type": "inception", "n1x1": 4, "n3x3red": 2, "n3x3": 6, "n5x5red": 2, "n5x5": 3, "pool_proj": 5}], 12),
    ([{"type": "fc", "num_neurons": 20, "activation": "tanh"}, {"type": "bn"}, {"type": "dropout", "drop_prob": 0.3},
      {"type": "sigmoid"}], 9),
])
def test_table_sizes_and_parameters_match_the_built_modules(layers, side):
    layers = net(*layers, side=side, depth=2)
    t = spec.table(layers)
    model = spec.build(layers)
    x = torch.randn(3, 2, side, side)
    for module, row in zip(model.layers, t["rows"]):
        x = module(x)
        assert list(x.shape[1:]) == row["output"], row["label"]
        assert count_params(module) == row["params"], row["label"]
        if row["params_formula"]:
            assert row["params_formula"].endswith(f"= {row['params']}")


# --- "dimensions don't fit" ------------------------------------------------------------------------

def test_the_lecture_stride_3_example_is_refused_with_index_input_and_non_integer_result():
    layers = net(conv(3, 1, stride=3), side=7)
    with pytest.raises(CnnlabError) as e:
        spec.build(layers)
    message = str(e.value)
    assert "layer 1 (conv) doesn't fit" in message and "1×7×7" in message and "2.33" in message


def test_padding_of_one_makes_the_stride_3_example_fit():
    model = spec.build(net(conv(3, 1, stride=3, pad=1), side=7))
    assert model(torch.zeros(1, 1, 7, 7)).shape == (1, 10)


def test_floor_true_accepts_a_window_that_does_not_tile_but_the_table_still_flags_it():
    layers = net(conv(3, 1, stride=3, floor=True), side=7)
    row = spec.table(layers)["rows"][1]
    assert not row["fits"] and row["error"] is None and row["output"] == [1, 2, 2]
    assert spec.build(layers)(torch.zeros(1, 1, 7, 7)).shape == (1, 10)


def test_table_flags_a_layer_that_does_not_fit_and_goes_on_with_the_floor():
    t = spec.table(net(conv(3, 1, stride=3), {"type": "pool", "sx": 2, "stride": 2}, side=7))
    bad, after = t["rows"][1], t["rows"][2]
    assert not bad["fits"] and bad["size_formula"] == "⌊(7 − 3 + 2·0)/3 + 1⌋ = ⌊2.33⌋ = 2"
    assert after["output"] == [1, 1, 1] and after["fits"]
    assert t["error"] == bad["error"]


def test_table_stops_at_a_window_larger_than_its_input():
    t = spec.table(net(conv(5, 4), {"type": "pool", "sx": 2, "stride": 2}, side=4))
    assert len(t["rows"]) == 2 and "larger than its 4×4 input" in t["error"]


# --- the input layer and the data ------------------------------------------------------------------

def test_larger_data_is_center_cropped_in_eval_and_randomly_cropped_in_training():
    model = spec.build(net(side=24), input_size=(1, 28, 28))
    crop = model.layers[0]
    x = torch.arange(4 * 28 * 28, dtype=torch.float32).view(4, 1, 28, 28)
    crop.eval()
    assert torch.equal(crop(x), x[:, :, 2:26, 2:26])
    crop.train()
    torch.manual_seed(0)
    out = crop(x)
    assert out.shape == (4, 1, 24, 24)
    offsets = []
    for i in range(4):  # each image is a 24x24 window of itself, at its own offset
        top, left = divmod(int(out[i, 0, 0, 0] - x[i, 0, 0, 0]), 28)
        assert torch.equal(out[i], x[i, :, top:top + 24, left:left + 24])
        offsets.append((top, left))
    assert len(set(offsets)) > 1


def test_channels_last_input_is_cropped_the_same():
    crop = spec.build(net(side=24), input_size=(1, 28, 28)).layers[0].train()
    x = torch.randn(2, 1, 28, 28)
    torch.manual_seed(1)
    a = crop(x)
    torch.manual_seed(1)
    b = crop(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(a, b)


@pytest.mark.parametrize("input_size,needle", [
    ((3, 28, 28), "declares 1 channel(s) but the data has 3"),
    ((1, 20, 20), "a spec may crop the data, not enlarge it"),
])
def test_data_that_cropping_cannot_fit_is_refused(input_size, needle):
    with pytest.raises(CnnlabError, match="layer 0 \\(input\\)") as e:
        spec.build(net(side=24), input_size=input_size)
    assert needle in str(e.value)


def test_softmax_takes_the_class_count_from_the_data_or_refuses_a_different_one():
    layers = [{"type": "input", "out_sx": 8, "out_depth": 1}, {"type": "softmax"}]
    assert spec.build(layers, num_classes=7)(torch.zeros(1, 1, 8, 8)).shape == (1, 7)
    with pytest.raises(CnnlabError, match="layer 5 \\(softmax\\): the spec has num_classes=10 but the data has 100"):
        spec.build(spec.load("convnetjs-mnist"), input_size=(1, 28, 28), num_classes=100)


def test_a_spec_without_input_layer_needs_an_input_size():
    layers = [conv(3, 2), {"type": "softmax", "num_classes": 3}]
    with pytest.raises(CnnlabError, match="layer 0: the spec has no input layer"):
        spec.build(layers)
    assert spec.build(layers, input_size=(1, 5, 5))(torch.zeros(2, 1, 5, 5)).shape == (2, 3)


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers,needle", [
    (net({"type": "convolution"}),
"layer 1 has unknown type 'convolution'"),
    (net(conv(3, 4, strides=2)), "layer 1 (conv) has unknown key 'strides'"),
    (net(conv(3, True)), "layer 1 (conv): filters must be a positive integer; received filters=True"),
    (net(conv(3, 2.5)), "filters must be a positive integer"),
    (net(conv(3, 4, pad=-1)), "pad must be a non-negative integer"),
    (net(conv(3, 100_000)), "filters may be at most 4096"),
    (net({"type": "conv", "filters": 4}), "layer 1 (conv) needs 'sx'"),
    (net({"type": "dropout", "drop_prob": 1.0}), "drop_prob must be in [0, 1)"),
    (net(conv(3, 4, activation="gelu")), "activation must be one of relu, sigmoid, tanh"),
    (net({"type": "fc", "num_neurons": 8}, conv(3, 4)), "layer 2 (conv) needs a C×H×W input"),
    (net({"type": "pool", "sx": 2, "stride": 2, "pad": 2}), "layer 1 (pool): padding may be at most half"),
    ([{"type": "softmax"}, {"type": "relu"}], "layer 0 (softmax): the softmax layer must be the last"),
    ([conv(3, 4), net()[0], {"type": "softmax"}],
     "layer 1 (input): the input layer must come first"),
    ([net()[0], {"type": "relu"}], "must end with a softmax layer"),
    ([], "a spec is a non-empty list of layers"),
    (["conv"], "layer 0 must be a mapping"),
    ([{"type": "relu"}] * (spec.MAX_LAYERS + 1), f"at most {spec.MAX_LAYERS} layers"),
])
def test_bad_layers_are_refused_with_their_index_and_one_sentence(layers, needle):
    with pytest.raises(CnnlabError) as e:
        spec.build(layers, input_size=None if layers and layers[0] == net()[0] else (1, 8, 8))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_too_many_parameters_are_refused_before_any_weight_is_allocated(monkeypatch):
    layers = net({"type": "fc", "num_neurons": 4096}, {"type": "fc", "num_neurons": 4096}, side=64, depth=3)
    built = []
    monkeypatch.setattr(nn.Linear, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(CnnlabError, match="parameters; at most 50,000,000"):
        spec.build(layers)
    assert not built


def test_an_activation_map_too_large_is_refused():
    layers = net(conv(1, 4096), side=64)
    assert "layer 1 (conv) outputs 16,777,216 values per image" in spec.table(layers)["error"]
    with pytest.raises(CnnlabError, match="layer 1 \\(conv\\) outputs 16,777,216 values per image"):
        spec.build(layers)


def test_yaml_is_read_as_data_only(tmp_path):
    good = tmp_path / "net.yaml"
    good.write_text("layers:\n  - {type: input, out_sx: 8, out_depth: 1}\n  - {type: softmax, num_classes: 2}\n")
    assert spec.load(good)[1] == {"type": "softmax", "num_classes": 2}
    evil = tmp_path / "evil.yaml"
    evil.write_text("- !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(CnnlabError, match="not valid JSON or YAML"):
        spec.load(evil)
    assert not Path("pwned").exists()


def test_files_that_are_not_specs_are_refused(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(" " * (spec.MAX_FILE_BYTES + 1))
    with pytest.raises(CnnlabError, match="at most 1,000,000"):
        spec.load(big)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"type": "input",')
    with pytest.raises(CnnlabError, match="not valid JSON"):
        spec.load(broken)
    with pytest.raises(CnnlabError, match="unknown top-level key 'layer'"):
        spec.parse('{"layer": []}')
    with pytest.raises(CnnlabError, match="no such spec file"):
        spec.load(tmp_path / "missing.json")


# --- training ----------------------------------------------------------------------------------

def test_built_network_learns_a_step_and_passes_the_input_size_check():
    from cnnlab.inspect import check_input_size

    model = spec.build(spec.load("convnetjs-mnist"), input_size=(1, 28, 28), num_classes=10)
    assert check_input_size(model, (1, 28, 28)) == (2, 10)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.eval()  # the center crop: the same 16 images every step, to be memorized
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8
