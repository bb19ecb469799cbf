"""Fuzz: any config values and any YAML text give a valid config or one CnnlabError sentence."""
import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig
from cnnlab.yamlio import load_yaml_text

KEYS = [f.name for f in dataclasses.fields(TrainConfig)] + ["learning_rate", "batch-size", "", "x" * 300]
leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=40), st.sampled_from(["1e-320", "2**64", "nan", "-1", "30,60", "cuda:7", "meta",
                                                       "adam", "cosine", "1" * 5000, "flip,crop:4", "none"]))
value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=12)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_sentence(error: CnnlabError) -> None:
    text = str(error)
    assert text and "\n" not in text and len(text) < 1200, text


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), value, max_size=4))
def test_config_updates_give_a_config_or_one_sentence(values):
    try:
        TrainConfig().updated(values).validate()
    except CnnlabError as e:
        one_sentence(e)


yaml_atoms = st.sampled_from(["a", ":", " ", "\n", "-", "&x", "*x", "[", "]", "{", "}", ",", "!!python/object:os.system",
                              "!!binary", "'", '"', "#", "|", ">", "<<: *x", "? ", "%YAML 1.1", "---", "...", "\t",
                              "1e999", ".nan", "2001-12-14", "0x1F", "~", "\\x00", "é", "\ud7ff"])


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(yaml_atoms, max_size=60).map("".join)))
def test_yaml_text_gives_a_value_or_one_sentence(text):
    try:
        values = load_yaml_text(text, "fuzz.yaml")
    except CnnlabError as e:
        one_sentence(e)
        return
    if isinstance(values, dict):
        try:
            TrainConfig().updated(values).validate()
        except CnnlabError as e:
            one_sentence(e)
