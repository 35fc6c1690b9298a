"""Writes the UI-format twin (for Load in ComfyUI's browser) of each API-format example in comfyui/examples/.

The API format has no layout or link table, so this lays the nodes out in columns by depth and derives
links and widget values from a running ComfyUI's /object_info (its own node definitions), which keeps the
two formats in step. Usage: python scripts/comfyui_ui_workflow.py http://127.0.0.1:8188
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "comfyui" / "examples"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_W, ROW_H = 380, 330


def is_widget(spec: list) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    found = []
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        for name in order.get(group, list(specs)):
            found.append((name, specs[name]))
    return found


def depth(node: str, api: dict, memo: dict[str, int]) -> int:
    if node not in memo:
        parents = [v[0] for v in api[node]["inputs"].values() if isinstance(v, list) and len(v) == 2
                   and isinstance(v[0], str)]
        memo[node] = 1 + max((depth(p, api, memo) for p in parents), default=-1)
    return memo[node]


def convert(api: dict, object_info: dict) -> dict:
    memo: dict[str, int] = {}
    rows: dict[int, int] = {}
    nodes, links = [], []
    outputs: dict[str, list[dict]] = {}
    for node_id in sorted(api, key=int):
        info = object_info[api[node_id]["class_type"]]
        outputs[node_id] = [{"name": name, "type": kind, "links": [], "slot_index": i}
                            for i, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True))]
    for order, node_id in enumerate(sorted(api, key=lambda n: (depth(n, api, memo), int(n)))):
        spec = api[node_id]
        info = object_info[spec["class_type"]]
        column = depth(node_id, api, memo)
        row = rows.get(column, 0)
        rows[column] = row + 1
        inputs, widgets = [], []
        for name, input_spec in ordered_inputs(info):
            value = spec["inputs"].get(name)
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            if is_widget(input_spec) and not linked:
                widgets.append(value if value is not None else input_spec[1].get("default"))
                if input_spec[1].get("image_upload") or input_spec[1].get("video_upload"):
                    widgets.append("image")
                continue
            kind = "COMBO" if isinstance(input_spec[0], list) else input_spec[0]
            link = None
            if linked:
                link = len(links) + 1
                source, slot = value[0], value[1]
                links.append([link, int(source), slot, int(node_id), len(inputs), kind])
                outputs[source][slot]["links"].append(link)
            inputs.append({"name": name, "type": kind, "link": link})
        nodes.append({"id": int(node_id), "type": spec["class_type"], "pos": [40 + column * COLUMN_W, 40 + row * ROW_H],
                      "size": [340, 260], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                      "outputs": outputs[node_id], "properties": {"Node name for S&R": spec["class_type"]},
                      "widgets_values": widgets})
    return {"last_node_id": max(int(n) for n in api), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(url: str) -> None:
    with urllib.request.urlopen(f"{url.rstrip('/')}/object_info", timeout=60) as response:
        object_info = json.loads(response.read())
    for path in sorted(EXAMPLES.glob("*.api.json")):
        ui = convert(json.loads(path.read_text()), object_info)
        target = path.with_name(path.name.replace(".api.json", ".json"))
        target.write_text(json.dumps(ui, indent=2) + "\n")
        print(target)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
