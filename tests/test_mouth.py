"""The weightless mouth as a viewer sees it: lips, seam, opening, colours, expression, and
templates whose mouth already moves. Each test renders the sample photo's mouth directly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from engine.face.base import FaceTrack
from engine.face.dlib_backend import DlibBackend
from engine.frames import from_bgr, to_bgr
from engine.lipsync.expression import speaking_level
from engine.lipsync.procedural import render_mouth, render_mouth_i420
from engine.samples import PHOTO_ID


@pytest.fixture(scope="module")
def face(storage: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sample photo at twice its size (a mouth about 90 px wide) and its landmarks."""
    avatar = storage / "avatars" / PHOTO_ID
    image = cv2.imread(str(avatar / "photo.png"))
    lm = FaceTrack.load(avatar / "track-dlib.npz").landmarks[0].astype(np.float32)
    return cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), lm * 2


@pytest.fixture(scope="module")
def detector() -> DlibBackend:
    return DlibBackend(min_face_px=40)


def detect(detector: DlibBackend, image: np.ndarray) -> np.ndarray:
    return detector.landmarks(image, detector.detect(image)[0])


def mouth_box(lm: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The lips, the opening, and a margin of skin around them."""
    mw = float(lm[54, 0] - lm[48, 0])
    x0, y0 = (lm[48:68].min(0) - 0.25 * mw).astype(int)
    x1, y1 = (lm[48:68].max(0) + 0.35 * mw).astype(int)
    return image[max(y0, 0):y1, max(x0, 0):x1]


def chroma(image: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    return np.hypot(lab[..., 1] - 128, lab[..., 2] - 128)


def behind_the_lips_in_green(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The template with whatever it shows between its lips (teeth) painted pure green."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(lm[60:68]).astype(np.int32)], 1)
    out = image.copy()
    out[cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0] = (40, 200, 40)
    return out


def green_pixels(image: np.ndarray) -> tuple[int, int]:
    """(fully green, faintly green) pixel counts: faint green is green seen through something."""
    px = image.astype(int)
    tint = px[..., 1] - np.maximum(px[..., 0], px[..., 2])
    return int((tint > 100).sum()), int(((tint > 15) & (tint <= 100)).sum())


@pytest.mark.parametrize("openness", [0.0, 0.3, 0.6, 1.0])
def test_a_grey_template_gets_a_colourless_mouth(face: tuple[np.ndarray, np.ndarray], openness: float) -> None:
    image, lm = face
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    h, w = grey.shape[:2]
    out = to_bgr(render_mouth_i420(from_bgr(grey), w, h, lm, openness, 0.2))
    assert not np.array_equal(mouth_box(lm, out), mouth_box(lm, grey))
    assert chroma(mouth_box(lm, out)).max() < 6


def cavity_colour(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Mean Lab (a*, b*) of the dark inside of the mouth."""
    box = mouth_box(lm, image)
    lab = cv2.cvtColor(box, cv2.COLOR_BGR2LAB).astype(np.float32)
    dark = lab[..., 0] < 0.4 * np.median(lab[..., 0])
    assert dark.sum() > 50, "the mouth should be open and dark inside"
    return lab[dark][:, 1:].mean(0) - 128


def test_the_inside_of_the_mouth_takes_the_light_of_the_face(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, lm = face
    warm = np.clip(image * np.array([0.7, 0.95, 1.2]), 0, 255).astype(np.uint8)
    cool = np.clip(image * np.array([1.3, 1.0, 0.72]), 0, 255).astype(np.uint8)
    warm_ab = cavity_colour(render_mouth(warm, lm, 0.9, 0.0), lm)
    cool_ab = cavity_colour(render_mouth(cool, lm, 0.9, 0.0), lm)
    # Warm light makes a yellower (b*) mouth than cool light does, as it makes yellower skin.
    assert warm_ab[1] - cool_ab[1] > 6, (warm_ab, cool_ab)


def test_closed_lips_meet_in_a_soft_continuous_line(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, lm = face
    out = render_mouth(image, lm, 0.0, 0.0)
    y = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
    mw = float(lm[54, 0] - lm[48, 0])
    xs = np.arange(int(lm[48, 0] + 0.2 * mw), int(lm[54, 0] - 0.2 * mw))
    top = np.interp(xs, lm[48:55, 0], lm[48:55, 1])
    bottom = np.interp(xs, lm[[48, 59, 58, 57, 56, 55, 54], 0], lm[[48, 59, 58, 57, 56, 55, 54], 1])
    darkest = np.array([y[int(t) + 1:int(b), x].min() for x, t, b in zip(xs, top, bottom, strict=True)])
    # No stitches: the darkest line through the lips varies smoothly along the mouth.
    assert (darkest - gaussian_filter1d(darkest, 3)).std() < 8
    # Lips, not teeth: nothing of what the template showed between its lips is left.
    full, faint = green_pixels(render_mouth(behind_the_lips_in_green(image, lm), lm, 0.0, 0.0))
    assert full + faint < 0.005 * mw * mw


@pytest.mark.parametrize("openness", [0.1, 0.2])
def test_half_open_lips_are_opaque(face: tuple[np.ndarray, np.ndarray], openness: float) -> None:
    image, lm = face
    full, faint = green_pixels(render_mouth(behind_the_lips_in_green(image, lm), lm, openness, 0.0))
    assert full > 0, "the mouth is a little open: some of what is behind the lips shows"
    assert faint <= full, "what shows between the lips shows fully; nothing shows through the lips"


def test_a_talking_template_is_shut_by_silence_and_opens_no_wider_than_natural(
        face: tuple[np.ndarray, np.ndarray], detector: DlibBackend) -> None:
    image, lm = face
    talking = render_mouth(image, lm, 0.9, 0.0)
    talking_lm = detect(detector, talking)

    def opening(lm68: np.ndarray) -> float:
        gap = np.mean([lm68[lo, 1] - lm68[up, 1] for up, lo in ((61, 67), (62, 66), (63, 65))])
        return float(gap / np.linalg.norm(lm68[8] - lm68[27]))

    assert opening(talking_lm) > 0.12
    shut = detect(detector, render_mouth(talking, talking_lm, 0.0, 0.0))
    assert opening(shut) < 0.25 * opening(talking_lm)
    wide_on_open = opening(detect(detector, render_mouth(talking, talking_lm, 1.0, 0.0)))
    wide_on_rest = opening(detect(detector, render_mouth(image, lm, 1.0, 0.0)))
    # Added on top of the template's own opening it would be nearly twice as wide.
    assert wide_on_open < 1.3 * wide_on_rest


def test_corners_follow_the_vowels_and_a_smile_relaxes(face: tuple[np.ndarray, np.ndarray],
                                                        detector: DlibBackend) -> None:
    image, lm = face

    def width(lm68: np.ndarray) -> float:
        return float(lm68[54, 0] - lm68[48, 0])

    def lift(lm68: np.ndarray) -> float:
        """How far the corners sit above the middle of the lips (a smile's upturn)."""
        return float((lm68[[62, 66], 1].mean() - lm68[[48, 54], 1].mean()) / width(lm68))

    spread = detect(detector, render_mouth(image, lm, 0.3, 1.0))
    rounded = detect(detector, render_mouth(image, lm, 0.3, -1.0))
    assert width(spread) > 1.1 * width(rounded)
    smiling = detect(detector, render_mouth(image, lm, 0.3, 0.0, relax=0.0))
    relaxed = detect(detector, render_mouth(image, lm, 0.3, 0.0, relax=1.0))
    assert lift(smiling) > 0.05
    assert lift(relaxed) < 0.8 * lift(smiling)


def test_the_smile_lets_go_while_speaking_and_returns_in_pauses() -> None:
    fps = 25.0
    t = np.arange(int(6 * fps)) / fps
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    openness = np.where((t < 2.0) | (t > 4.0), syllables, 0.0)
    level = speaking_level(openness, fps)
    assert level[int(1.0 * fps)] > 0.9 and level[int(5.0 * fps)] > 0.9
    assert level[int(3.0 * fps)] < 0.1


def test_a_small_face_looks_like_a_large_one_made_small(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, lm = face
    factor = 160 / image.shape[1]  # a face of about 50 px brow to chin
    small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    for openness in (0.0, 0.5, 1.0):
        drawn_small = render_mouth(small, lm * factor, openness, 0.0).astype(np.float32)
        made_small = cv2.resize(render_mouth(image, lm, openness, 0.0), small.shape[1::-1],
                                interpolation=cv2.INTER_AREA).astype(np.float32)
        box = mouth_box(lm * factor, np.abs(drawn_small - made_small))
        assert box.mean() < 8, openness  # the renderer before the working canvas: 7, 10, 16


def test_a_tilted_face_opens_along_its_own_axis(face: tuple[np.ndarray, np.ndarray], detector: DlibBackend) -> None:
    image, lm = face
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1.0)
    tilted = cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REFLECT)
    tilted_lm = (lm @ turn[:, :2].T + turn[:, 2]).astype(np.float32)
    out = render_mouth(tilted, tilted_lm, 0.8, 0.0)
    above_nose = slice(0, int(tilted_lm[27:36, 1].min()))
    assert np.array_equal(out[above_nose], tilted[above_nose])
    opened = detect(detector, out)
    u = (opened[54] - opened[48]) / np.linalg.norm(opened[54] - opened[48])
    down = np.array([-u[1], u[0]])
    gap = np.mean([(opened[lo] - opened[up]) @ down for up, lo in ((61, 67), (62, 66), (63, 65))])
    assert gap / np.linalg.norm(opened[8] - opened[27]) > 0.08
