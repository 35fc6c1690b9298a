"""The ComfyUI node pack (comfyui/) in a real ComfyUI, through its HTTP API: the API-format examples are
queued with POST /prompt, followed on /history/{id}, and the saved MP4s fetched from /view and checked
with ffprobe and the engine's own lip-sync self-check, against the engine CLI on the same input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from skimage import data as skdata

from bridge.keys import KeyStore
from engine import EngineSettings
from engine.samples import write_template_video
from tests.bridge_fixtures import RedisServer, ServedBridge, served_bridge
from tests.comfyui_server import SNAPSHOT, VENV_PYTHON, ComfyUI, comfyui_home, run_comfyui
from tests.comfyui_ws import events
from tests.conftest import REPO, ffprobe

EXAMPLES = REPO / "comfyui" / "examples"
HOME = comfyui_home()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(HOME is None, reason=f"no ComfyUI: $COMFYUI_DIR is unset and {SNAPSHOT} does not exist"),
]


SCREENSHOTS = REPO / "out" / "comfyui"
SHORT = "Hello, and welcome."
LONG = " ".join(["Welcome to the course. Over the next weeks we will read, write and talk about the ideas that "
                 "shaped the field, one careful step at a time."] * 4)
LOGO_RGB = (255, 0, 255)


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.api.json").read_text())


def write_inputs(folder: Path) -> None:
    """The pictures the examples name: two usable faces (the sample portrait, mirrored and cropped) and a
    photo of a coffee cup, which has none."""
    face = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "lecturer-a.png"), face)
    cv2.imwrite(str(folder / "lecturer-b.png"), cv2.flip(face, 1))
    cv2.imwrite(str(folder / "lecturer-c.png"), face[16:496, 32:480])
    cv2.imwrite(str(folder / "no-face.png"), cv2.cvtColor(skdata.coffee(), cv2.COLOR_RGB2BGR))


def write_media(base: Path, storage: Path) -> None:
    """A magenta logo and a short 360p template video in the input folder, and a copy of that video just
    outside it (what a path trick would reach)."""
    logo = np.zeros((60, 120, 3), np.uint8)
    logo[:] = LOGO_RGB[::-1]
    cv2.imwrite(str(base / "input" / "logo.png"), logo)
    still = write_template_video(base / "template-720p.mp4", EngineSettings(storage_root=storage), seconds=2.0)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(still), "-vf", "scale=-2:360",
                    "-c:v", "libx264", "-crf", "16", str(base / "input" / "template.mp4")], check=True, timeout=120)
    (base / "outside.mp4").write_bytes((base / "input" / "template.mp4").read_bytes())


@pytest.fixture(scope="module")
def comfy(storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyUI]:
    assert HOME is not None
    if not VENV_PYTHON.exists():
        pytest.fail(f"{VENV_PYTHON} is missing: run `make comfyui-setup` (make test does)")
    base = tmp_path_factory.mktemp("comfyui")
    (base / "input").mkdir()
    write_inputs(base / "input")
    write_media(base, storage)
    with run_comfyui(HOME, base, {"ENGINE_STORAGE_ROOT": str(storage)}) as server:
        yield server


def saved_files(entry: dict) -> dict[str, list[dict]]:
    """Node id → the files it saved, as listed in the prompt's history."""
    return {node: [item for item in output.get("images", []) if item.get("type") == "output"]
            for node, output in entry["outputs"].items() if output.get("images")}


def evaluate(video: Path, storage: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "engine", "eval", str(video), "--json"], capture_output=True,
                          text=True, timeout=300, check=True, env={**os.environ, "ENGINE_STORAGE_ROOT": str(storage)})
    return json.loads(done.stdout)


def check_mp4(video: Path) -> None:
    codecs = {s["codec_type"]: s["codec_name"] for s in ffprobe(video)["streams"]}
    assert codecs == {"video": "h264", "audio": "aac"}, codecs


def run_example(comfy: ComfyUI, workflow: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    entry = comfy.wait(comfy.queue(workflow))
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy.tail())
    return entry, time.perf_counter() - started


def test_text_example_renders_in_sync_like_the_cli(comfy: ComfyUI, storage: Path, tmp_path: Path) -> None:
    workflow = example("text_to_video")
    entry, seconds = run_example(comfy, workflow)
    [[item]] = saved_files(entry).values()
    video = comfy.fetch(item, tmp_path / "comfyui.mp4")
    check_mp4(video)
    ours = evaluate(video, storage)
    assert ours["peak_r"] >= 0.6 and abs(ours["lag_frames"]) <= 1, ours

    speech = workflow["1"]["inputs"]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "render", "--text", speech["text"], "--lang", speech["language"],
                    "--avatar", workflow["2"]["inputs"]["saved_avatar"], "--out", str(tmp_path / "cli.mp4")],
                   check=True, capture_output=True, timeout=300,
                   env={**os.environ, "ENGINE_STORAGE_ROOT": str(storage)})
    cli_seconds = time.perf_counter() - started
    cli = evaluate(tmp_path / "cli.mp4", storage)
    assert ours["frames"] == cli["frames"]
    assert abs(ours["peak_r"] - cli["peak_r"]) <= 0.02 and ours["lag_frames"] == cli["lag_frames"], (ours, cli)
    duration = float(ffprobe(video)["format"]["duration"])
    print(f"\n{duration:.2f} s video: POST /prompt → saved file {seconds:.2f} s; engine CLI {cli_seconds:.2f} s; "
          f"r {ours['peak_r']:.3f} (CLI {cli['peak_r']:.3f}), lag {ours['lag_frames']} (CLI {cli['lag_frames']})")


def test_one_speech_three_avatars(comfy: ComfyUI, storage: Path, tmp_path: Path) -> None:
    entry, _ = run_example(comfy, example("one_speech_three_avatars"))
    saved = [item for items in saved_files(entry).values() for item in items]
    assert len(saved) == 3
    for i, item in enumerate(saved):
        video = comfy.fetch(item, tmp_path / f"{i}.mp4")
        check_mp4(video)
        report = evaluate(video, storage)
        assert report["peak_r"] >= 0.6 and abs(report["lag_frames"]) <= 1, report


def test_batch_skips_the_image_without_a_face(comfy: ComfyUI, tmp_path: Path) -> None:
    workflow = example("batch_face_check")
    entry, _ = run_example(comfy, workflow)
    saved = {node: items for node, items in saved_files(entry).items()}
    savers = {node for node, spec in workflow.items() if spec["class_type"] == "SaveVideo"}
    loads = {node: spec["inputs"]["image"] for node, spec in workflow.items() if spec["class_type"] == "LoadImage"}
    prefixes = {workflow[node]["inputs"]["filename_prefix"] for node in saved}
    assert len(saved) == 2 and set(saved) < savers, saved
    assert prefixes == {"talking_head/batch-1", "talking_head/batch-3"}
    for node, items in saved.items():
        check_mp4(comfy.fetch(items[0], tmp_path / f"{node}.mp4"))
    verdicts = {node: entry["outputs"][node]["text"][0] for node, spec in workflow.items()
                if spec["class_type"] == "TalkingHeadFaceCheck"}
    skipped = [text for text in verdicts.values() if "skipped" in text]
    assert len(skipped) == 1 and skipped[0].startswith("no-face.png: skipped") and "face" in skipped[0], verdicts
    assert sorted(loads.values()) == ["lecturer-a.png", "lecturer-c.png", "no-face.png"]


def test_ui_example_loads_in_the_browser(comfy: ComfyUI) -> None:
    """Each UI-format example loads on ComfyUI's canvas in headless Chromium (Debian's); the PNGs land in
    out/comfyui/ to look at (the README shows the text example's)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("text_to_video", "batch_face_check"):
        out = SCREENSHOTS / f"{name}.png"
        out.unlink(missing_ok=True)
        subprocess.run([str(VENV_PYTHON), str(REPO / "tests" / "comfyui_screenshot.py"), comfy.url,
                        str(EXAMPLES / f"{name}.json"), str(out)], check=True, timeout=240)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000


def render_workflow(text: str, prefix: str, video: str = "(none)", **render: object) -> dict:
    """The text example with another text, save prefix, avatar source or Render inputs."""
    workflow = example("text_to_video")
    workflow["1"]["inputs"]["text"] = text
    if video != "(none)":
        workflow["2"]["inputs"].update(saved_avatar="(none)", video=video)
    workflow["3"]["inputs"].update(render)
    workflow["4"]["inputs"]["filename_prefix"] = prefix
    return workflow


def messages(entry: dict) -> dict[str, dict]:
    return {kind: body for kind, body in entry["status"].get("messages", [])}


def outputs_named(comfy: ComfyUI, prefix: str) -> list[Path]:
    folder, stem = (comfy.base / "output" / prefix).parent, Path(prefix).name
    return sorted(folder.glob(f"{stem}*")) if folder.is_dir() else []


def test_stop_interrupts_a_render(comfy: ComfyUI, storage: Path, tmp_path: Path) -> None:
    """Stop (POST /interrupt) while Render reports progress: the prompt ends interrupted, nothing is saved,
    and the next prompt renders as usual."""
    with events(comfy.url, "stop-test") as stream:
        prompt_id = comfy.queue(render_workflow(LONG, "talking_head/stopped"), client_id="stop-test")
        stream.wait_for(lambda m: m["type"] == "progress" and m["data"].get("prompt_id") == prompt_id
                        and m["data"].get("node") == "3" and m["data"]["value"] > 0, timeout_s=300)
        comfy.post("/interrupt", {})
        entry = comfy.wait(prompt_id, timeout_s=120)
    assert entry["status"]["status_str"] == "error", entry["status"]
    interrupted = messages(entry)
    assert "execution_interrupted" in interrupted and "execution_success" not in interrupted, interrupted
    assert interrupted["execution_interrupted"]["node_id"] == "3", interrupted
    assert saved_files(entry) == {} and outputs_named(comfy, "talking_head/stopped") == []

    after, _ = run_example(comfy, render_workflow(SHORT, "talking_head/after-stop"))
    [[item]] = saved_files(after).values()
    check_mp4(comfy.fetch(item, tmp_path / "after.mp4"))


def logo_box(picture: np.ndarray) -> tuple[int, int, int, int, int]:
    """Where the magenta logo's pixels are in an RGB picture: x0, y0, x1, y1 and how many there are."""
    mask = (picture[..., 0] > 200) & (picture[..., 1] < 60) & (picture[..., 2] > 200)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 0, "no logo pixels in the picture"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, int(mask.sum())


def video_frame(video: Path, at_s: float, out: Path) -> np.ndarray:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-ss", f"{at_s}", "-i", str(video),
                    "-frames:v", "1", str(out)], check=True, timeout=60)
    return cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)


def test_logo_sits_in_its_corner_of_the_video_and_the_poster(comfy: ComfyUI, tmp_path: Path) -> None:
    """A Load Image logo in the top-right corner at 20 % of the width: in a decoded frame of the saved video
    and in the poster IMAGE output (saved by core Save Image), the logo is there and nowhere else."""
    workflow = render_workflow(SHORT, "talking_head/logo", logo=["5", 0], logo_corner="top-right", logo_scale=0.2)
    workflow["5"] = {"class_type": "LoadImage", "inputs": {"image": "logo.png"}}
    workflow["6"] = {"class_type": "SaveImage",
                     "inputs": {"images": ["3", 1], "filename_prefix": "talking_head/poster"}}
    entry, _ = run_example(comfy, workflow)
    saved = saved_files(entry)
    video = comfy.fetch(saved["4"][0], tmp_path / "logo.mp4")
    check_mp4(video)
    poster = cv2.cvtColor(cv2.imread(str(comfy.fetch(saved["6"][0], tmp_path / "poster.png"))), cv2.COLOR_BGR2RGB)
    frame = video_frame(video, 0.5, tmp_path / "frame.png")
    assert poster.shape == frame.shape, (poster.shape, frame.shape)
    width = frame.shape[1]
    logo_w, logo_h = 0.2 * width, 0.2 * width / 2
    for name, picture in (("video frame", frame), ("poster", poster)):
        x0, y0, x1, y1, count = logo_box(picture)
        assert abs(x1 - (width - 20)) <= 3 and abs(y0 - 20) <= 3, (name, x0, y0, x1, y1, width)
        assert abs((x1 - x0) - logo_w) <= 4 and abs((y1 - y0) - logo_h) <= 4, (name, x0, y0, x1, y1)
        assert count >= 0.9 * (x1 - x0) * (y1 - y0), (name, count)


def test_video_avatar_from_the_input_folder(comfy: ComfyUI, storage: Path, tmp_path: Path) -> None:
    """A template video uploaded to ComfyUI's input folder renders in sync; a name that points outside that
    folder is refused when the prompt is queued, by this node, with the fix, although such a file exists."""
    entry, _ = run_example(comfy, render_workflow(SHORT, "talking_head/video-avatar", video="template.mp4"))
    [[item]] = saved_files(entry).values()
    video = comfy.fetch(item, tmp_path / "video-avatar.mp4")
    check_mp4(video)
    assert ffprobe(video)["streams"][0]["height"] == 360
    report = evaluate(video, storage)
    assert report["peak_r"] >= 0.6 and abs(report["lag_frames"]) <= 1, report

    avatars = sorted(p.name for p in (storage / "avatars").iterdir())
    for trick in ("../outside.mp4", str(comfy.base / "outside.mp4")):
        refusal = comfy.refusal(render_workflow(SHORT, "talking_head/trick", video=trick))
        [error] = refusal["node_errors"]["2"]["errors"]
        assert "Talking Head Avatar" in error["details"] and "outside ComfyUI's input folder" in error["details"]
        assert "Fix: pick a video from the list, or upload one" in error["details"], error
    as_saved = render_workflow(SHORT, "talking_head/trick")
    as_saved["2"]["inputs"]["saved_avatar"] = str(comfy.base / "outside.mp4")
    assert comfy.refusal(as_saved)["node_errors"]["2"]["errors"][0]["extra_info"]["input_name"] == "saved_avatar"
    assert sorted(p.name for p in (storage / "avatars").iterdir()) == avatars


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path
           ) -> Iterator[ServedBridge]:
    with served_bridge(tmp_path_factory.mktemp("bridge"), redis_server.url, storage) as served:
        yield served


def remote_workflow(base: str, api_key: str) -> dict:
    return {
        "1": {"class_type": "TalkingHeadRemote", "inputs": {
            "bridge_url": base, "api_key": api_key, "avatar_id": "astronaut-photo", "text": SHORT,
            "language": "en", "voice": "", "resolution": "source"}},
        "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "filename_prefix": "talking_head/remote",
                                                     "format": "auto", "codec": "auto"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }


def test_remote_renders_on_a_real_bridge(comfy: ComfyUI, bridge: ServedBridge, tmp_path: Path) -> None:
    """Talking Head (remote) against `python -m bridge serve` and a worker: the saved video plays, the link is
    the bridge's signed download link; a key the bridge does not know fails the node with the fix."""
    key = KeyStore(bridge.settings.keys_path).create()
    entry, _ = run_example(comfy, remote_workflow(bridge.base, key))
    [item] = saved_files(entry)["2"]
    check_mp4(comfy.fetch(item, tmp_path / "remote.mp4"))
    [link] = entry["outputs"]["3"]["text"]
    assert link.startswith(f"{bridge.base}/files/") and "sig=" in link and "exp=" in link, link
    with urllib.request.urlopen(link, timeout=60) as response:
        (tmp_path / "linked.mp4").write_bytes(response.read())
    check_mp4(tmp_path / "linked.mp4")

    stranger = KeyStore(tmp_path / "other-keys.json").create()
    failed = comfy.wait(comfy.queue(remote_workflow(bridge.base, stranger)))
    error = messages(failed)["execution_error"]
    assert error["node_type"] == "TalkingHeadRemote", error
    text = error["exception_message"]
    assert text.startswith("Talking Head (remote): the bridge refused the API key") and "Fix: paste a valid" in text
    assert stranger not in text and stranger.split("_")[-1] not in comfy.tail()
