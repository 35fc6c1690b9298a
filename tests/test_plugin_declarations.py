"""The tool declarations as the Dify versions people run read them: the schema every agent gives the model is
valid JSON Schema, every tool can be called by an agent, every dropdown has a typed twin for the versions
and users whose dropdown stays empty, the manifest names the lowest Dify version the plugin needs, and
every label is given in the four languages Dify's console shows."""

from __future__ import annotations

import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from tests.dify_agent_schema import BUILDERS, REPO, agent_schema, load, tool_specs

SPECS = tool_specs()
LOCALES = ("en_US", "zh_Hans", "ja_JP", "pt_BR")
FIRST_DIFY_WITH = {"string": "1.0.0", "number": "1.0.0", "boolean": "1.0.0", "select": "1.0.0",
                   "secret-input": "1.0.0", "file": "1.0.0", "files": "1.0.0", "dynamic-select": "1.5.1"}
"""The first Dify release that shows each parameter type in a tool: plugins came with 1.0.0, the
dynamic-select type (options fetched from the plugin) with 1.5.1."""


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def parameters(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in spec.get("parameters") or []}


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("tool", SPECS)
def test_the_schema_agents_send_the_model_is_valid_json_schema(tool: str, builder: str) -> None:
    schema = agent_schema(SPECS[tool], builder)
    Draft202012Validator.check_schema(schema)  # what OpenAI-style function calling checks first
    for name, prop in schema["properties"].items():
        assert prop["description"], f"{tool}.{name}: the model is told nothing about it"
        for value in prop.get("enum", []):
            assert Draft202012Validator(prop).is_valid(value), f"{tool}.{name}: option {value!r} breaks its own type"


def test_the_check_catches_a_type_name_json_schema_does_not_have() -> None:
    """Dify issue 16872's failure: a type name Dify passes through unchanged makes the schema invalid."""
    spec = {"parameters": [{"name": "avatar", "type": "dynamic-select", "form": "llm", "llm_description": "who"}]}
    for builder in BUILDERS:
        with pytest.raises(SchemaError, match="dynamic-select"):
            Draft202012Validator.check_schema(agent_schema(spec, builder))


@pytest.mark.parametrize("tool", SPECS)
def test_an_agent_can_call_every_tool(tool: str) -> None:
    """Dify leaves file parameters out of agent schemas: none may be required, and a tool that takes a file
    must also take it as a URL (and say so to the model)."""
    schema = agent_schema(SPECS[tool])
    required = [p["name"] for p in parameters(SPECS[tool]).values() if p["form"] == "llm" and p.get("required")]
    assert set(required) <= set(schema["properties"]), f"{tool}: a required parameter no agent can fill"
    files = [p for p in parameters(SPECS[tool]).values() if p["type"] in {"file", "files"}]
    if files:
        assert any(name.endswith("url") for name in schema["properties"]), tool
        assert "URL" in SPECS[tool]["description"]["llm"], f"{tool}: its description invites a file agents cannot pass"


def test_agents_name_avatars_and_voices_as_strings() -> None:
    for tool in ("text_to_video", "audio_to_video"):
        props = agent_schema(SPECS[tool])["properties"]
        assert props["avatar"]["type"] == "string" and "name" in props["avatar"]["description"]
        assert "avatar_choice" not in props  # the builder's dropdown is no business of the model's
    props = agent_schema(SPECS["text_to_video"])["properties"]
    assert props["voice"]["type"] == "string" and "list_voices" in props["voice"]["description"]
    assert agent_schema(SPECS["list_voices"])["properties"]["language"]["type"] == "string"
    create = agent_schema(SPECS["create_avatar"])
    assert set(create["properties"]) == {"url", "name"} and create["required"] == ["name"]


def test_every_dropdown_has_a_typed_twin() -> None:
    """A form-form dynamic-select stays empty on Dify 1.6-1.14 and for editors on every version (its options
    endpoint answers admins and owners only), and the tool node stores its value as a constant: each
    dropdown ``X_choice`` therefore has a string ``X`` that agents, editors and variables can fill."""
    dropdowns = 0
    for tool, spec in SPECS.items():
        params = parameters(spec)
        for name, param in params.items():
            if param["type"] != "dynamic-select":
                continue
            dropdowns += 1
            assert param["form"] == "form" and name.endswith("_choice"), f"{tool}.{name}"
            twin = params.get(name.removesuffix("_choice"))
            assert twin is not None and (twin["type"], twin["form"]) == ("string", "llm"), f"{tool}.{name}"
            assert twin["label"]["en_US"] in param["human_description"]["en_US"], f"{tool}.{name} must point to it"
    assert dropdowns == 3  # avatar on both video tools, voice on text_to_video


def test_minimum_dify_version_is_the_newest_feature_the_tools_use() -> None:
    meta = load(REPO / "manifest.yaml")["meta"]
    minimum = meta["minimum_dify_version"]
    # Dify's install dialog compares it with semver's gte, which needs a plain x.y.z string.
    assert isinstance(minimum, str) and re.fullmatch(r"\d+\.\d+\.\d+", minimum), minimum
    used = {p["type"] for spec in SPECS.values() for p in spec.get("parameters") or []}
    assert used <= set(FIRST_DIFY_WITH), f"say which Dify first shows {used - set(FIRST_DIFY_WITH)}"
    assert minimum == max((FIRST_DIFY_WITH[t] for t in used), key=version)
    guide = (REPO / "dify_plugin" / "ADMIN_GUIDE.md").read_text(encoding="utf-8")
    assert re.findall(r"needs Dify (\d+\.\d+\.\d+) or later", guide) == [minimum]


def i18n_objects(spec: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    tool = spec["identity"]["name"]
    found = [(f"{tool} label", spec["identity"]["label"]), (f"{tool} description", spec["description"]["human"])]
    for p in spec.get("parameters") or []:
        found += [(f"{tool}.{p['name']} label", p["label"]),
                  (f"{tool}.{p['name']} human_description", p["human_description"])]
        found += [(f"{tool}.{p['name']}={o['value']}", o["label"]) for o in p.get("options") or []]
    return found


@pytest.mark.parametrize("tool", SPECS)
def test_labels_and_descriptions_in_four_languages(tool: str) -> None:
    for where, text in i18n_objects(SPECS[tool]):
        missing = [locale for locale in LOCALES if not str(text.get(locale) or "").strip()]
        assert not missing, f"{where}: no {', '.join(missing)}"
