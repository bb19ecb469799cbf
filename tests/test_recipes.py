"""Every recipe in recipes/ is a valid config, and says what it measured."""
from pathlib import Path

import pytest
import yaml

from cnnlab.train import TrainConfig

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_a_valid_config_with_its_measurement_in_the_header(path):
    cfg = TrainConfig().updated(yaml.safe_load(path.read_text())).validate()
    assert (cfg.spec is not None or cfg.model in path.name) and cfg.data in path.name
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("Measured:" in line or "Not measured" in line for line in header)
    assert not any("MEASURED" in line for line in header), "fill in the measured figures"
