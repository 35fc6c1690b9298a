"""Contact sheets of the mouth: what a person would look at to judge a render, frozen into one PNG.

Sync figures say whether the mouth opens on time, not whether it looks like a mouth. A grid of mouth crops
sampled across the video, each labelled with its frame, the loudness of the speech there and the measured
lip gap, shows teeth, colour and shape at a glance, and makes a regression visible in a diff of two PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine import EngineSettings
from engine.audio import decode_audio, speech_envelope
from engine.evaluate import ENVELOPE_SR, mouth_opening
from engine.face import get_backend, track_frames
from engine.frames import to_bgr
from engine.media import probe
from engine.video import read_frames

TILES = 24
COLUMNS = 6
TILE_W, TILE_H = 200, 150
LABEL_H = 18
TITLE_H = 44
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class MouthTrack:
    """The sampled frames (BGR) of a video with their landmarks, and per-frame figures for the whole video."""

    indices: list[int]
    frames: list[np.ndarray]
    landmarks: np.ndarray
    opening: np.ndarray
    envelope: np.ndarray


def sample_indices(n_frames: int, count: int = TILES) -> list[int]:
    """``count`` frame indices spread evenly from the first frame to the last (fewer for a short video)."""
    return sorted({round(x) for x in np.linspace(0, max(0, n_frames - 1), min(count, max(1, n_frames)))})


def track_mouth(video: Path, settings: EngineSettings, n_frames: int) -> MouthTrack:
    """Decode and track every frame (as ``engine eval`` does), keeping the frames the sheet shows."""
    info = probe(video)
    wanted = set(sample_indices(n_frames))
    kept: dict[int, np.ndarray] = {}

    def frames():
        for index, frame in enumerate(read_frames(video, info.width, info.height, pix_fmt="yuv420p")):
            image = to_bgr(frame)
            if index in wanted:
                kept[index] = image
            yield image

    track = track_frames(frames(), get_backend(settings), fps=info.fps, min_face_px=16)
    samples = decode_audio(video, ENVELOPE_SR)
    envelope = speech_envelope(samples, ENVELOPE_SR, info.fps, len(track))
    indices = sorted(kept)
    return MouthTrack(indices, [kept[i] for i in indices], track.landmarks, mouth_opening(track.landmarks),
                      envelope)


def mouth_tile(frame: np.ndarray, landmarks: np.ndarray, face_px: float) -> np.ndarray:
    """The mouth cut out around the lip landmarks' centre, 0.8 x 0.6 face heights, scaled to one tile."""
    centre = landmarks[48:68].mean(axis=0)
    size = (max(4, round(0.8 * face_px)), max(3, round(0.6 * face_px)))
    crop = cv2.getRectSubPix(frame, size, (float(centre[0]), float(centre[1])))
    return cv2.resize(crop, (TILE_W, TILE_H), interpolation=cv2.INTER_CUBIC)


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour=(235, 235, 235)) -> None:
    cv2.putText(image, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


def contact_sheet(track: MouthTrack, title: str, subtitle: str) -> np.ndarray:
    """A grid of labelled mouth tiles under a two-line title (ASCII: OpenCV draws no CJK)."""
    face_px = float(np.median(np.ptp(track.landmarks[:, :, 1], axis=1)))
    rows = -(-len(track.indices) // COLUMNS)
    sheet = np.full((TITLE_H + rows * (TILE_H + LABEL_H), COLUMNS * TILE_W, 3), 32, np.uint8)
    _text(sheet, title, (8, 18), 0.55)
    _text(sheet, subtitle, (8, 37), 0.42, (190, 190, 190))
    for slot, (index, frame) in enumerate(zip(track.indices, track.frames, strict=True)):
        x, y = (slot % COLUMNS) * TILE_W, TITLE_H + (slot // COLUMNS) * (TILE_H + LABEL_H)
        sheet[y: y + TILE_H, x: x + TILE_W] = mouth_tile(frame, track.landmarks[index], face_px)
        envelope = float(track.envelope[index]) if index < len(track.envelope) else 0.0
        bar = round(envelope * (TILE_W - 2))
        sheet[y + TILE_H - 3: y + TILE_H, x + 1: x + 1 + bar] = (80, 200, 80)
        _text(sheet, f"#{index} env {envelope:.2f} open {track.opening[index]:.3f}", (x + 4, y + TILE_H + 13), 0.38)
    return sheet


def write_sheet(track: MouthTrack, path: Path, title: str, subtitle: str) -> Path:
    cv2.imwrite(str(path), contact_sheet(track, title, subtitle))
    return path
