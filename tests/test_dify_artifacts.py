"""The example app DSLs in dify_plugin/examples: they parse, use the current DSL version, name the plugin's
tools and parameters as the tool yamls declare them, and their graphs hang together. Also the pin script."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.dify_agent_schema import REPO, agent_schema, load, tool_specs

EXAMPLES = REPO / "dify_plugin" / "examples"
WORKFLOW = EXAMPLES / "talking_head_workflow.yml"
AGENT = EXAMPLES / "talking_head_agent.yml"
PIN = REPO / "scripts" / "pin_dsl.py"

# Dify's CURRENT_APP_DSL_VERSION for the 1.16 and 1.17 releases (api/constants/dsl_version.py).
DSL_VERSION = "0.7.0"
PROVIDER_ID = "talking-head/talking_head/talking_head"
PLUGIN_ID = "talking-head/talking_head"
IDENTIFIER_RE = re.compile(
    r"(?:([a-z0-9_-]{1,64})/)?([a-z0-9_-]{1,255}):([0-9]{1,4})(\.[0-9]{1,4}){1,3}(-\w{1,16})?@[a-f0-9]{32,64}")
TEMPLATE_RE = re.compile(r"\{\{#([a-zA-Z0-9_]{1,50})\.([a-zA-Z_][a-zA-Z0-9_]{0,29})#\}\}")
# What every tool node offers besides the variables its tool declares in output_schema.
TOOL_BUILTIN_OUTPUTS = {"text", "files", "json"}


def params(spec: dict[str, Any], form: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in spec.get("parameters") or [] if p["form"] == form}


def check_value(param: dict[str, Any], value: Any) -> None:
    name = param["name"]
    if param["type"] == "select":
        assert value in {o["value"] for o in param["options"]}, f"{name}: {value!r} is not an option"
    elif param["type"] == "number":
        assert isinstance(value, int | float) and not isinstance(value, bool), name
        assert param.get("min", value) <= value <= param.get("max", value), f"{name}: {value} out of range"
    elif param["type"] == "boolean":
        assert isinstance(value, bool), name


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return load(REPO / "manifest.yaml")


@pytest.mark.parametrize("path", [WORKFLOW, AGENT], ids=["workflow", "agent"])
def test_header_and_dependency(path: Path, manifest: dict[str, Any]) -> None:
    dsl = load(path)
    assert dsl["kind"] == "app"
    assert dsl["version"] == DSL_VERSION and isinstance(dsl["version"], str)
    assert dsl["app"]["name"] and dsl["app"]["icon_type"] == "emoji"
    [dependency] = [d for d in dsl["dependencies"] if d["type"] == "package"]
    identifier = dependency["value"]["plugin_unique_identifier"]
    assert IDENTIFIER_RE.fullmatch(identifier), identifier
    assert identifier.split("@")[0] == f"{PLUGIN_ID}:{manifest['version']}"
    assert f"{manifest['author']}/{manifest['name']}" == PLUGIN_ID


@pytest.mark.parametrize("path", [WORKFLOW, AGENT], ids=["workflow", "agent"])
def test_each_app_names_the_model_plugin_it_needs(path: Path) -> None:
    """As Dify's own export does: a marketplace dependency for each model provider, so the import offers to
    install it instead of showing a model that cannot be selected."""
    dsl = load(path)
    if "workflow" in dsl:
        providers = {n["data"]["model"]["provider"] for n in dsl["workflow"]["graph"]["nodes"]
                     if n["data"]["type"] == "llm"}
    else:
        providers = {dsl["model_config"]["model"]["provider"]}
    assert providers
    marketplace = [d["value"]["marketplace_plugin_unique_identifier"] for d in dsl["dependencies"]
                   if d["type"] == "marketplace"]
    assert all(IDENTIFIER_RE.fullmatch(identifier) for identifier in marketplace), marketplace
    assert {identifier.split(":")[0] for identifier in marketplace} == {p.rsplit("/", 1)[0] for p in providers}


def test_no_init_in_dify_plugin() -> None:
    assert not list((REPO / "dify_plugin").rglob("__init__.py"))


def test_workflow_graph_connects_start_llm_tool_end() -> None:
    dsl = load(WORKFLOW)
    assert dsl["app"]["mode"] == "workflow"
    graph = dsl["workflow"]["graph"]
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert len(nodes) == len(graph["nodes"]), "node ids must be unique"
    types = {node_id: n["data"]["type"] for node_id, n in nodes.items()}
    assert sorted(types.values()) == ["end", "llm", "start", "tool"]
    successors: dict[str, list[str]] = {}
    for e in graph["edges"]:
        assert e["source"] in nodes and e["target"] in nodes, e["id"]
        assert (e["sourceHandle"], e["targetHandle"], e["type"]) == ("source", "target", "custom")
        assert e["data"]["sourceType"] == types[e["source"]] and e["data"]["targetType"] == types[e["target"]]
        successors.setdefault(e["source"], []).append(e["target"])
    # One chain from the start node to the end node through every node.
    [start] = [i for i, t in types.items() if t == "start"]
    order = [start]
    while order[-1] in successors:
        [following] = successors[order[-1]]
        order.append(following)
    assert [types[i] for i in order] == ["start", "llm", "tool", "end"]

    # Every variable reference names a node upstream of the one using it, and an output that node has.
    start_vars = {v["variable"] for v in nodes[start]["data"]["variables"]}
    assert nodes[start]["data"]["variables"][0]["type"] == "paragraph" and "topic" in start_vars
    tool_node = nodes[order[2]]
    tool_outputs = TOOL_BUILTIN_OUTPUTS | set(tool_node["data"]["output_schema"]["properties"])
    outputs = {order[0]: start_vars, order[1]: {"text"}, order[2]: tool_outputs}
    for position, node_id in enumerate(order):
        text = yaml.safe_dump(nodes[node_id]["data"])
        refs = [m.groups() for m in TEMPLATE_RE.finditer(text)]
        if types[node_id] == "end":
            refs += [tuple(o["value_selector"]) for o in nodes[node_id]["data"]["outputs"]]
        for ref_node, var in refs:
            assert ref_node in order[:position], f"{node_id} uses {ref_node}, which does not run before it"
            assert var in outputs[ref_node], f"{node_id} uses {ref_node}.{var}, which it does not output"
    end_outputs = {o["variable"]: o for o in nodes[order[3]]["data"]["outputs"]}
    assert end_outputs["video"]["value_selector"] == [order[2], "files"]
    assert end_outputs["video"]["value_type"] == "array[file]"
    assert end_outputs["video_url"]["value_selector"] == [order[2], "video_url"]


def test_workflow_tool_node_matches_the_tool_yaml() -> None:
    spec = tool_specs()["text_to_video"]
    [data] = [n["data"] for n in load(WORKFLOW)["workflow"]["graph"]["nodes"] if n["data"]["type"] == "tool"]
    assert data["provider_id"] == data["provider_name"] == PROVIDER_ID
    assert data["provider_type"] == "builtin" and data["plugin_id"] == PLUGIN_ID
    assert data["tool_name"] == "text_to_video" and data["tool_node_version"] == "2"
    assert data["output_schema"] == spec["output_schema"]
    llm_params, form_params = params(spec, "llm"), params(spec, "form")
    # Parameters the LLM/workflow fills go in tool_parameters; node settings go in tool_configurations.
    assert set(data["tool_parameters"]) <= set(llm_params)
    assert set(data["tool_configurations"]) <= set(form_params)
    for name, item in data["tool_parameters"].items():
        assert item["type"] in {"mixed", "constant", "variable"}
        if item["type"] == "constant":
            check_value(llm_params[name], item["value"])
    assert data["tool_parameters"]["text"] == {"type": "mixed", "value": "{{#script_llm.text#}}"}
    assert data["tool_parameters"]["avatar"] == {"type": "mixed", "value": "astronaut"}  # typed: every version
    for name, item in data["tool_configurations"].items():
        assert item["type"] == "constant"
        check_value(form_params[name], item["value"])
    assert data["tool_configurations"]["delivery"]["value"] == "file"


def test_agent_enables_its_tools_with_valid_settings() -> None:
    dsl = load(AGENT)
    assert dsl["app"]["mode"] == "agent-chat"
    config = dsl["model_config"]
    agent_mode = config["agent_mode"]
    assert agent_mode["enabled"] is True and agent_mode["strategy"] == "function_call"
    tools = {t["tool_name"]: t for t in agent_mode["tools"]}
    assert set(tools) == {"text_to_video", "list_avatars", "list_voices", "get_video"}
    specs = tool_specs()
    for name, tool in tools.items():
        assert tool["enabled"] is True
        assert tool["provider_id"] == tool["provider_name"] == PROVIDER_ID
        assert tool["provider_type"] == "builtin"
        assert tool["tool_label"] == specs[name]["identity"]["label"]["en_US"]
        # An agent only keeps the settings (form parameters); the model fills the rest.
        form_params = params(specs[name], "form")
        assert set(tool["tool_parameters"]) <= set(form_params), name
        for key, value in tool["tool_parameters"].items():
            check_value(form_params[key], value)
        # What the model is offered for it is a function schema OpenAI-style function calling accepts.
        Draft202012Validator.check_schema(agent_schema(specs[name]))
    prompt = config["pre_prompt"]
    for needle in ("list_avatars", "list_voices", "get_video", "text_to_video", "30 seconds", "job id"):
        assert needle in prompt
    assert config["model"]["mode"] == "chat" and config["prompt_type"] == "simple"


def _fake_package(path: Path, files: dict[str, bytes]) -> str:
    """Write a package and return the identifier the daemon's algorithm gives it, computed independently."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in reversed(sorted(files)):  # out of order on purpose: the checksum sorts by path
            archive.writestr(name, files[name])
    pairs = sorted(files.items())
    digest = hashlib.sha256(b"".join(hashlib.sha256(n.encode()).digest() + hashlib.sha256(c).digest()
                                     for n, c in pairs)).hexdigest()
    return f"{PLUGIN_ID}:0.1.0@{digest}"


def test_pin_package_rewrites_the_identifier(tmp_path: Path) -> None:
    manifest = b"version: 0.1.0\ntype: plugin\nauthor: talking-head\nname: talking_head\n"
    expected = _fake_package(tmp_path / "p.difypkg", {"manifest.yaml": manifest, "tools/a.py": b"x = 1\n",
                                                      "main.py": b"print()\n"})
    copies = []
    for source in (WORKFLOW, AGENT):
        copies.append(tmp_path / source.name)
        shutil.copy(source, copies[-1])
    run = subprocess.run([sys.executable, str(PIN), str(tmp_path / "p.difypkg"), *map(str, copies)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == expected
    for source, copy in zip((WORKFLOW, AGENT), copies, strict=True):
        before, after = load(source), load(copy)
        [package] = [d for d in after["dependencies"] if d["type"] == "package"]
        assert package["value"]["plugin_unique_identifier"] == expected
        after["dependencies"] = before["dependencies"]
        assert after == before, "only the identifier may change"
    again = subprocess.run([sys.executable, str(PIN), str(tmp_path / "p.difypkg"), str(copies[0])],
                           capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "already pinned" in again.stdout

    other = tmp_path / "other.difypkg"
    _fake_package(other, {"manifest.yaml": manifest.replace(b"talking_head", b"someone_else")})
    refused = subprocess.run([sys.executable, str(PIN), str(other), str(copies[0])],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "no dependency on talking-head/someone_else" in refused.stderr
