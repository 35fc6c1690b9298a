"""Every setting an admin can change is documented where they look: README tables and .env.example."""

from __future__ import annotations

import pytest

from bridge.settings import BridgeSettings
from engine.settings import EngineSettings
from tests.conftest import REPO


@pytest.mark.parametrize(("model", "prefix", "readme"), [
    (BridgeSettings, "BRIDGE_", "bridge/README.md"),
    (EngineSettings, "ENGINE_", "engine/README.md"),
])
def test_every_setting_is_in_the_readme_and_env_example(model: type, prefix: str, readme: str) -> None:
    names = [prefix + name.upper() for name in model.model_fields]
    env_example = (REPO / ".env.example").read_text()
    docs = (REPO / readme).read_text()
    assert [n for n in names if n not in env_example] == []
    assert [n for n in names if n not in docs] == []
