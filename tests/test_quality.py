"""`make quality`'s cases are what they claim to be, and one small case runs end to end.

The quality run only means something if its hard cases are hard in the way their names say: a face of about
50 px, a tilted head, a picture without colour, a template whose mouth already moves. These checks are cheap
(no full run): the builders' own landmarks, a detector allowed smaller faces than the engine's default, and
one short render.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine import Engine, EngineSettings
from engine.evaluate import EvalReport, mouth_opening
from engine.face import get_backend, track_frames
from engine.samples import PHOTO_ID
from engine.video import read_frames
from tests.quality import cases
from tests.quality.report import write_reports
from tests.quality.run import misses, run_case
from tests.quality.sheet import COLUMNS, LABEL_H, TILE_H, TILE_W, TILES, TITLE_H, sample_indices


def _detected(image: np.ndarray) -> np.ndarray:
    """Landmarks of the largest face, from a detector that looks for faces down to ~20 px."""
    backend = get_backend(EngineSettings(_env_file=None, min_face_px=32))  # type: ignore[call-arg]
    bgr = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    boxes = backend.detect(bgr)
    assert boxes, "no face found"
    return backend.landmarks(bgr, boxes[0])


@pytest.mark.parametrize(("build", "size", "low", "high"), [
    (cases.small_portrait, (600, 800), 50, 60),
    (cases.webcam, (640, 480), 42, 50),
])
def test_small_faces_are_as_small_as_claimed(build, size: tuple[int, int], low: float, high: float) -> None:
    built = build()
    assert (built.image.shape[1], built.image.shape[0]) == size
    assert low <= built.face_px <= high
    found = _detected(built.image)
    assert low - 3 <= float(np.ptp(found[:, 1])) <= high + 3
    assert np.abs(found - built.landmarks).mean() < 2.0  # the one face is where the builder put it


def test_tilted_photo_leans_as_claimed() -> None:
    built = cases.tilted()
    assert built.tilt_deg == pytest.approx(cases.TILT_DEG, abs=0.1)
    assert 12 <= cases.TILT_DEG <= 15
    assert cases.eye_line_deg(_detected(built.image)) == pytest.approx(cases.TILT_DEG, abs=2.0)
    assert abs(cases.eye_line_deg(cases.astronaut_landmarks()) - cases.TILT_DEG) > 10  # the source is level


def test_black_and_white_has_no_colour(tmp_path: Path, settings: EngineSettings) -> None:
    built = cases.black_and_white()
    assert built.image.ndim == 2
    path = cases.CASES[[c.name for c in cases.CASES].index("black-and-white")].template(tmp_path, settings)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.ndim == 2  # a one-channel file, as a scanned print is
    chroma = cv2.cvtColor(cv2.cvtColor(stored, cv2.COLOR_GRAY2BGR), cv2.COLOR_BGR2YCrCb)[..., 1:]
    assert np.all(chroma == 128)
    assert 200 <= built.face_px <= 260


def test_cases_cover_the_issue() -> None:
    names = {c.name for c in cases.CASES}
    assert {"sample-en", "sample-zh", "small-portrait", "webcam", "tilted", "black-and-white", "talking-template",
            "long-paragraph"} <= names
    assert next(c for c in cases.CASES if c.name == "sample-zh").lang == "zh"
    assert 550 <= len(cases.LONG) <= 700
    assert "https://" in cases.LONG and "@" in cases.LONG and cases.LONG.count(",") >= 10


@pytest.mark.slow
def test_talking_template_already_moves_its_mouth(tmp_path: Path, settings: EngineSettings) -> None:
    path = cases.talking_template(tmp_path, settings)
    frames = read_frames(path, 1280, 720)
    track = track_frames(frames, get_backend(settings), fps=25.0, min_face_px=16)
    opening = mouth_opening(track.landmarks)
    assert len(track) > 75
    assert float(opening.std()) > 0.02
    assert float(opening.max()) > 2.5 * float(np.percentile(opening, 10))


def test_misses_names_each_target() -> None:
    good = EvalReport(100, 25.0, 0.8, 0, 0.99, 0.05, 0.03, {})
    assert misses(good) == []
    bad = EvalReport(100, 25.0, 0.5, -2, None, 0.05, 0.03, {})
    assert misses(bad) == ["r 0.50 < 0.6", "lag -2", "SSIM unknown"]


def test_sample_indices_spread_over_the_video() -> None:
    assert sample_indices(200) == sorted(set(sample_indices(200)))
    assert len(sample_indices(200)) == TILES and sample_indices(200)[0] == 0 and sample_indices(200)[-1] == 199
    assert sample_indices(5) == [0, 1, 2, 3, 4]


def test_a_face_too_small_is_a_refused_row(tmp_path: Path, settings: EngineSettings) -> None:
    strict = settings.model_copy(update={"min_face_px": 300})
    case = next(c for c in cases.CASES if c.name == "black-and-white")
    row = run_case(case, strict, Engine(strict), tmp_path)
    assert row.status == "refused" and "face_too_small" in row.message
    write_reports([row], {}, tmp_path)
    assert "| refused: the face is" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_smallest_case_end_to_end(tmp_path: Path, settings: EngineSettings, engine: Engine) -> None:
    case = cases.Case("smoke", "sample photo, one short sentence", cases.SHORT, avatar=PHOTO_ID)
    row = run_case(case, settings, engine, tmp_path)
    assert row.status in {"pass", "fail"}, row.message
    assert row.peak_r is not None and row.duration_s and row.render_s
    assert (tmp_path / "smoke.mp4").is_file()
    sheet = cv2.imread(str(tmp_path / "smoke.png"))
    rows = -(-len(sample_indices(round(row.duration_s * 25))) // COLUMNS)
    assert sheet.shape[1] == COLUMNS * TILE_W and sheet.shape[0] == TITLE_H + rows * (TILE_H + LABEL_H)
    write_reports([row], {"run": "test"}, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["cases"][0]["case"] == "smoke" and data["all_passed"] == (row.status == "pass")
