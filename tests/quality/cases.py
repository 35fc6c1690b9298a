"""The fixed cases of `make quality`, and the templates they start from.

Every template is made here, offline and deterministically, from the sample astronaut photo that ships in
scikit-image (``engine.samples``), so a run on any machine judges the renderer on the same pictures. Each
built picture carries the astronaut's landmarks through the same transform that made it: that is how the
tests check a case is what it claims (face height, tilt) without trusting the detector under test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from engine import Engine, EngineSettings, RenderRequest
from engine.face import get_backend
from engine.samples import PHOTO_ID, VIDEO_ID, astronaut_720p, astronaut_bgr

ENGLISH = ("Good morning, and thank you for joining us today. I will walk you through the new features one by "
           "one, and then answer your questions.")
MANDARIN = "大家好，欢迎来到我们的课程。今天我们一起学习，怎样用一句话生成一段会说话的视频。"
LONG = ("Thanks for calling the support line of Northwind Travel, where, as always, we are happy to help. Before "
        "we begin, please have your booking number ready; it starts with two letters, followed by six digits, and "
        "you will find it in your confirmation email. If you booked online, you can also manage your trip "
        "yourself at https://www.northwind-travel.example.com/manage, where, after signing in, you can change "
        "seats, add luggage or, if your plans change, cancel for free within twenty-four hours. For anything "
        "else, write to help@northwind-travel.example.com, and a member of our team will, usually within one "
        "working day, get back to you.")
TALKING_TEMPLATE_TEXT = ("This video already talks: my mouth moves in the template itself, and the new words have "
                         "to replace the old ones.")
TALKING = "Now I say something else entirely, and my lips should follow these words, not the ones underneath."
SHORT = "Hello, nice to meet you."

PORTRAIT_SIZE, PORTRAIT_FACE_PX = (600, 800), 55
WEBCAM_SIZE, WEBCAM_FACE_PX = (640, 480), 46
TILT_DEG = 13.0


@dataclass(frozen=True)
class Built:
    """A template picture (BGR, or 2-D grey) and where the astronaut's 68 landmarks ended up in it."""

    image: np.ndarray
    landmarks: np.ndarray

    @property
    def face_px(self) -> float:
        """Face height as the engine measures it: the landmarks' bounds, brows to chin."""
        return float(np.ptp(self.landmarks[:, 1]))

    @property
    def tilt_deg(self) -> float:
        """Angle of the line between the eye centres; positive when the face leans counter-clockwise."""
        return eye_line_deg(self.landmarks)


def eye_line_deg(landmarks: np.ndarray) -> float:
    left, right = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    return math.degrees(math.atan2(-(right[1] - left[1]), right[0] - left[0]))


@cache
def astronaut_landmarks() -> np.ndarray:
    """The 68 landmarks of the 512x512 sample photo (its face is about 91 px tall)."""
    photo = astronaut_bgr()
    backend = get_backend(EngineSettings(_env_file=None))  # type: ignore[call-arg]
    return backend.landmarks(photo, backend.detect(photo)[0]).astype(np.float64)


def _resized(image: np.ndarray, landmarks: np.ndarray, scale: float) -> Built:
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    factor = np.array([size[0] / w, size[1] / h])
    return Built(out, (landmarks + 0.5) * factor - 0.5)


def framed(size: tuple[int, int], face_px: float, centre: tuple[int, int]) -> Built:
    """The photo scaled so the face is ``face_px`` tall, its centre at ``centre`` of a ``size`` frame.

    The rest of the frame is the photo's edge pixels repeated and blurred into a soft backdrop, and the photo
    fades into it: a plain studio-like background that holds no second face, unlike a mirrored border.
    """
    lm = astronaut_landmarks()
    small = _resized(astronaut_bgr(), lm, face_px / float(np.ptp(lm[:, 1])))
    face_centre = (small.landmarks.min(axis=0) + small.landmarks.max(axis=0)) / 2
    left, top = round(centre[0] - face_centre[0]), round(centre[1] - face_centre[1])
    h, w = small.image.shape[:2]
    right, bottom = size[0] - left - w, size[1] - top - h
    if min(left, top, right, bottom) < 0:
        raise ValueError(f"a {face_px} px face centred at {centre} does not fit a {size} frame")
    padded = cv2.copyMakeBorder(small.image, top, bottom, left, right, cv2.BORDER_REPLICATE)
    backdrop = cv2.GaussianBlur(padded, (0, 0), sigmaX=0.1 * max(size))
    inside = np.zeros(padded.shape[:2], np.float32)
    feather = max(2, w // 24)
    inside[top + feather: top + h - feather, left + feather: left + w - feather] = 1.0
    alpha = cv2.GaussianBlur(inside, (0, 0), sigmaX=feather / 2)[..., None]
    image = np.clip(alpha * padded + (1 - alpha) * backdrop + 0.5, 0, 255).astype(np.uint8)
    return Built(image, small.landmarks + np.array([left, top]))


def small_portrait() -> Built:
    """A 600x800 head-and-shoulders portrait whose face is only ~55 px, brows to chin."""
    return framed(PORTRAIT_SIZE, PORTRAIT_FACE_PX, (300, 300))


def webcam() -> Built:
    """A 640x480 webcam-sized frame with a ~46 px face, as from a laptop camera at arm's length."""
    return framed(WEBCAM_SIZE, WEBCAM_FACE_PX, (320, 200))


def _still_720p() -> Built:
    lm = astronaut_landmarks()
    return Built(astronaut_720p(), (lm + 0.5) * (1280 / 512) - 0.5)


def tilted(degrees: float = TILT_DEG) -> Built:
    """The 720p still turned about the face centre until the eye line leans ``degrees`` counter-clockwise.

    The photo's own eye line already leans about 3 degrees the other way; that is taken out first.
    """
    still = _still_720p()
    centre = (still.landmarks.min(axis=0) + still.landmarks.max(axis=0)) / 2
    turn = degrees - eye_line_deg(still.landmarks)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), turn, 1.0)
    h, w = still.image.shape[:2]
    image = cv2.warpAffine(still.image, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    landmarks = np.c_[still.landmarks, np.ones(len(still.landmarks))] @ matrix.T
    return Built(image, landmarks)


def black_and_white() -> Built:
    """The 720p still as a single-channel grey picture, like a scanned black-and-white print."""
    still = _still_720p()
    return Built(cv2.cvtColor(still.image, cv2.COLOR_BGR2GRAY), still.landmarks)


def _photo(name: str, build: Callable[[], Built]) -> Callable[[Path, EngineSettings], Path]:
    def make(folder: Path, settings: EngineSettings) -> Path:
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), build().image)
        return path

    return make


def talking_template(folder: Path, settings: EngineSettings) -> Path:
    """A template in which the person already talks: the engine's own render onto the sample video."""
    path = folder / "talking-template.mp4"
    Engine(settings).render(RenderRequest(avatar=VIDEO_ID, out=path, text=TALKING_TEMPLATE_TEXT, lang="en"))
    return path


@dataclass(frozen=True)
class Case:
    """One render of `make quality`: what is said, in which language, over which template.

    ``avatar`` names a sample avatar; ``template`` instead builds a template file that is added as an avatar
    before the render, so a refusal (a face too small, say) is reported apart from the render itself.
    """

    name: str
    what: str
    text: str
    lang: str = "en"
    avatar: str = VIDEO_ID
    template: Callable[[Path, EngineSettings], Path] | None = None


CASES: tuple[Case, ...] = (
    Case("sample-en", "sample video template, English", ENGLISH),
    Case("sample-zh", "sample video template, Mandarin", MANDARIN, lang="zh"),
    Case("sample-photo", "sample still photo (512x512, ~91 px face), English", ENGLISH, avatar=PHOTO_ID),
    Case("small-portrait", f"600x800 portrait, ~{PORTRAIT_FACE_PX} px face", ENGLISH,
         template=_photo("small-portrait", small_portrait)),
    Case("webcam", f"640x480 webcam frame, ~{WEBCAM_FACE_PX} px face", ENGLISH,
         template=_photo("webcam", webcam)),
    Case("tilted", f"720p photo, eye line tilted {TILT_DEG:g} degrees", ENGLISH, template=_photo("tilted", tilted)),
    Case("black-and-white", "720p black-and-white photo (one grey channel)", ENGLISH,
         template=_photo("black-and-white", black_and_white)),
    Case("talking-template", "template video in which the person already talks", TALKING,
         template=talking_template),
    Case("long-paragraph", f"sample video, a {len(LONG)}-character paragraph with a URL and an email", LONG),
)
