"""Sync self-check of a rendered video: does the mouth open when the voice is loud, and did
the rest of the face stay as the template had it?

Mouth opening per frame (inner-lip distance over face height, from the landmark backend) is
correlated with the speech envelope of the audio over lags of ±5 frames. SSIM of the region
above the nose is measured against the template frames the video was made from.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from .audio import decode_audio, speech_envelope
from .avatars import AvatarStore
from .errors import CorruptMedia
from .face import get_backend, track_frames
from .frames import to_bgr
from .media import ffprobe_exe, probe
from .settings import EngineSettings
from .video import read_frames

MAX_LAG = 5
ENVELOPE_SR = 16000


@dataclass
class EvalReport:
    frames: int
    fps: float
    peak_r: float
    lag_frames: int
    ssim_above_nose: float | None
    mouth_open_mean: float
    mouth_open_std: float
    r_by_lag: dict[int, float]

    def to_dict(self) -> dict:
        return asdict(self)

    def meets_targets(self) -> bool:
        return self.peak_r >= 0.6 and abs(self.lag_frames) <= 1 and (self.ssim_above_nose or 0) >= 0.98


def read_comment(path: Path) -> dict:
    out = subprocess.run(
        [ffprobe_exe(), "-v", "error", "-show_entries", "format_tags=comment", "-of", "json", str(path)],
        capture_output=True, timeout=30, check=False)
    try:
        return json.loads(json.loads(out.stdout)["format"]["tags"]["comment"])
    except (KeyError, ValueError, TypeError):
        return {}


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(N,) inner-lip gap divided by face height (nose bridge to chin)."""
    gap = np.mean([np.linalg.norm(landmarks[:, lo] - landmarks[:, up], axis=-1)
                   for up, lo in ((61, 67), (62, 66), (63, 65))], axis=0)
    face_h = np.linalg.norm(landmarks[:, 8] - landmarks[:, 27], axis=-1)
    return gap / np.maximum(face_h, 1e-6)


def lagged_correlation(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = MAX_LAG) -> dict[int, float]:
    """Pearson r of mouth[i] with envelope[i + lag]; a positive lag means the mouth moves first."""
    out = {}
    n = min(len(mouth), len(envelope))
    for lag in range(-max_lag, max_lag + 1):
        a = mouth[max(0, -lag): n - max(0, lag)]
        b = envelope[max(0, lag): n - max(0, -lag) if lag < 0 else n][: len(a)]
        a = a[: len(b)]
        out[lag] = float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else 0.0
    return out


def evaluate(video: Path, settings: EngineSettings, audio: Path | None = None) -> EvalReport:
    info = probe(video)
    if not info.has_video:
        raise CorruptMedia(f"{video.name} has no video stream")
    frames = read_frames(video, info.width, info.height, pix_fmt="yuv420p")
    track = track_frames((to_bgr(f) for f in frames), get_backend(settings), fps=info.fps, min_face_px=16)
    n_frames = len(track)
    mouth = mouth_opening(track.landmarks)

    samples = decode_audio(audio or video, ENVELOPE_SR)
    envelope = speech_envelope(samples, ENVELOPE_SR, info.fps, n_frames)
    by_lag = lagged_correlation(mouth, envelope)
    lag = max(by_lag, key=lambda k: by_lag[k])
    return EvalReport(
        frames=n_frames, fps=info.fps, peak_r=round(by_lag[lag], 4), lag_frames=lag,
        ssim_above_nose=_ssim_above_nose(video, info.width, info.height, n_frames, settings),
        mouth_open_mean=round(float(mouth.mean()), 4), mouth_open_std=round(float(mouth.std()), 4),
        r_by_lag={k: round(v, 4) for k, v in by_lag.items()},
    )


def _ssim_above_nose(video: Path, w: int, h: int, n_frames: int, settings: EngineSettings) -> float | None:
    """Mean SSIM (luma) of the face above the nose tip against the template frames, if known."""
    meta = read_comment(video)
    avatar_id = meta.get("avatar_id")
    if not avatar_id:
        return None
    store = AvatarStore(settings)
    avatar = store.get(str(avatar_id))
    template = store.template(avatar)
    sx, sy = w / template.width, h / template.height
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        frames = read_frames(video, w, h, pix_fmt="yuv420p")
        for frame, (ref, lm) in zip(frames, template.frames(n_frames, Path(tmp)), strict=False):
            ref = ref[: template.height]
            if (ref.shape[1], ref.shape[0]) != (w, h):
                ref = cv2.resize(ref, (w, h), interpolation=cv2.INTER_AREA)
            lm = lm * [sx, sy]
            face_h = lm[8, 1] - lm[27, 1]
            x0, x1 = int(max(0, lm[0, 0])), int(min(w, lm[16, 0]))
            y0, y1 = int(max(0, lm[19:25, 1].min() - 0.3 * face_h)), int(min(h, lm[30, 1]))
            a, b = frame[:h][y0:y1, x0:x1], ref[y0:y1, x0:x1]
            if min(a.shape) >= 7:
                scores.append(structural_similarity(a, b, data_range=255))
    return round(float(np.mean(scores)), 4) if scores else None
