"""The JSON Schema a Dify agent gives the model for one of the plugin's tools, built the way Dify builds it.

The rules are restated here as facts read from Dify's source, not copied from it:

- Dify API, the agent-chat runner: ``api/core/agent/base_agent_runner.py``
  ``_convert_tool_to_prompt_message_tool`` (langgenius/dify at 01c6681f; later Dify moved the same rules to
  ``Tool.get_llm_parameters_json_schema`` in ``api/core/tools/__base/tool.py``), with the type names from
  ``as_normal_type`` in ``api/core/plugin/entities/parameters.py`` (at 0b4e62b2). The schema is an object
  with ``properties`` and ``required``. Only ``form: llm`` parameters go in; ``system-files``, ``file`` and
  ``files`` are left out. Each property is ``{"type": T, "description": llm_description or ""}``, where T is
  ``"string"`` for ``secret-input``, ``select`` and ``checkbox`` and the parameter's type name for every
  other type (so ``dynamic-select`` stays ``"dynamic-select"``). A ``select`` with options also gets
  ``enum``: the option values. Required parameters are listed in ``required``.
- dify_plugin SDK 0.10.2, which agent strategy plugins (the workflow Agent node) use:
  ``interfaces/agent/strategy.py`` ``_set_prompt_tool_parameter`` with ``entities/tool.py``
  ``ToolParameterType.to_prompt_schema``. The same, except that T is ``"string"`` for ``select``,
  ``secret-input`` and ``date`` (not ``checkbox``), ``date-range`` is an object of ``start`` and ``end``
  strings, and only ``file`` and ``files`` are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
LEFT_OUT = {"api": frozenset({"system-files", "file", "files"}), "sdk": frozenset({"file", "files"})}
AS_STRING = {"api": frozenset({"secret-input", "select", "checkbox"}),
             "sdk": frozenset({"select", "secret-input", "date"})}
BUILDERS = tuple(LEFT_OUT)
"""``api``: Dify's agent-chat apps; ``sdk``: agent strategies in a workflow's Agent node."""


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def tool_specs(root: Path = REPO) -> dict[str, dict[str, Any]]:
    """The plugin's tool declarations by tool name, in the provider yaml's order."""
    provider = load(root / "provider" / "talking_head.yaml")
    return {spec["identity"]["name"]: spec for spec in (load(root / rel) for rel in provider["tools"])}


def property_for(parameter: dict[str, Any], builder: str) -> dict[str, Any]:
    kind = parameter["type"]
    description = parameter.get("llm_description") or ""
    if builder == "sdk" and kind == "date-range":
        return {"type": "object", "description": description,
                "properties": {"start": {"type": "string"}, "end": {"type": "string"}}}
    prop: dict[str, Any] = {"type": "string" if kind in AS_STRING[builder] else kind, "description": description}
    if kind == "select" and parameter.get("options"):
        prop["enum"] = [option["value"] for option in parameter["options"]]
    return prop


def agent_schema(spec: dict[str, Any], builder: str = "api") -> dict[str, Any]:
    """The ``parameters`` object of the function the model is offered for the tool ``spec``."""
    schema: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
    for parameter in spec.get("parameters") or []:
        if parameter["form"] != "llm" or parameter["type"] in LEFT_OUT[builder]:
            continue
        schema["properties"][parameter["name"]] = property_for(parameter, builder)
        if parameter.get("required"):
            schema["required"].append(parameter["name"])
    return schema
