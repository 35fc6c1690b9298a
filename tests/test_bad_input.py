"""Bad input gets a specific, actionable error, and nothing is left behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine import Engine, EngineSettings, RenderRequest
from engine.audio import decode_audio
from engine.avatars import AvatarStore
from engine.errors import (
    CorruptMedia,
    FaceTooSmall,
    InvalidText,
    MediaTooLong,
    NoFace,
    UnknownAvatar,
    UnsupportedMedia,
)
from engine.media import plain_reason
from engine.video import read_frames
from tests.conftest import REPO, ffmpeg
from tests.hostile_media import lying_mkv, lying_mp3, many_channel_wav, one_pixel_video


def render(engine: Engine, tmp_path: Path, **kwargs) -> None:
    kwargs.setdefault("avatar", "astronaut-photo")
    engine.render(RenderRequest(out=tmp_path / "out.mp4", **kwargs))


@pytest.mark.parametrize("text", ["", "   \n\t ", "...!?"])
def test_empty_text(engine: Engine, tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidText, match="text is empty"):
        render(engine, tmp_path, text=text)
    assert not list(tmp_path.iterdir()), "a failed render must not leave files behind"


def test_text_too_long(settings: EngineSettings, tmp_path: Path) -> None:
    small = Engine(settings.model_copy(update={"max_text_chars": 20}))
    with pytest.raises(InvalidText, match="limit is 20"):
        render(small, tmp_path, text="This sentence is certainly longer than twenty characters.")


def test_unknown_avatar(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(UnknownAvatar, match=r"no avatar 'nobody'.*astronaut"):
        render(engine, tmp_path, text="Hi.", avatar="nobody")


@pytest.mark.parametrize("avatar_id", ["../etc", "a/b", "UPPER", ""])
def test_avatar_ids_never_become_paths(engine: Engine, tmp_path: Path, avatar_id: str) -> None:
    with pytest.raises(UnknownAvatar):
        render(engine, tmp_path, text="Hi.", avatar=avatar_id)


def test_audio_with_unsupported_extension(engine: Engine, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    with pytest.raises(UnsupportedMedia, match="audio must be one of"):
        render(engine, tmp_path, audio=notes)


def test_corrupt_audio(engine: Engine, tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(CorruptMedia, match=r"junk\.wav is not readable media"):
        render(engine, tmp_path, audio=junk)


def test_audio_with_the_wrong_extension(engine: Engine, tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=1", str(wav))
    renamed = tmp_path / "tone.mp3"
    wav.rename(renamed)
    with pytest.raises(UnsupportedMedia, match=r"extension says mp3 but the content is wav"):
        render(engine, tmp_path, audio=renamed)


def test_audio_too_long(settings: EngineSettings, tmp_path: Path) -> None:
    wav = tmp_path / "long.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=4", str(wav))
    small = Engine(settings.model_copy(update={"max_audio_s": 3.0}))
    with pytest.raises(MediaTooLong, match=r"4.0 s long; the limit is 3 s"):
        render(small, tmp_path, audio=wav)


def test_text_and_audio_together(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InvalidText, match=r"either text .* or an audio file"):
        render(engine, tmp_path, text="Hi.", audio=tmp_path / "x.wav")


def test_template_without_a_face(tmp_path: Path) -> None:
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((400, 400, 3), 180, np.uint8))
    with pytest.raises(NoFace, match=r"no face .*frames? 0"):
        Engine(EngineSettings(storage_root=tmp_path / "s")).avatars.add(blank)


def test_template_face_too_small(tmp_path: Path) -> None:
    from skimage import data

    tiny = tmp_path / "tiny.png"
    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    canvas = np.full((720, 1280, 3), 200, np.uint8)
    canvas[300:300 + 180, 500:500 + 180] = cv2.resize(photo, (180, 180), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tiny), canvas)
    with pytest.raises(FaceTooSmall, match=r"px from brow to chin; at least 40 px is needed\. Use the same picture at "
                       r"1[3-9]\d0x[7-9]\d0 px or larger"):
        Engine(EngineSettings(storage_root=tmp_path / "s")).avatars.add(tiny)


def test_several_faces_use_the_largest_and_say_so(tmp_path: Path) -> None:
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    # A side-by-side montage: two real faces, one of them a little larger.
    canvas = np.full((512, 1000, 3), 200, np.uint8)
    canvas[:, :512] = photo
    canvas[20:20 + 480, 515:515 + 480] = cv2.resize(photo, (480, 480), interpolation=cv2.INTER_AREA)
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), canvas)
    avatar = Engine(EngineSettings(storage_root=tmp_path / "s")).avatars.add(path)
    assert any("2 faces" in note and "largest" in note for note in avatar.notes), avatar.notes


def test_truncated_template_video(tmp_path: Path, storage: Path) -> None:
    whole = (storage / "avatars" / "astronaut" / "forward.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(CorruptMedia):
        Engine(EngineSettings(storage_root=tmp_path / "s")).avatars.add(cut)


def test_template_too_long(settings: EngineSettings, storage: Path, tmp_path: Path) -> None:
    small = Engine(settings.model_copy(update={"max_template_s": 2.0, "storage_root": tmp_path / "s"}))
    with pytest.raises(MediaTooLong, match="templates may be at most 2 s"):
        small.avatars.add(storage / "avatars" / "astronaut" / "forward.mp4")


def test_template_with_unsupported_extension(engine: Engine, tmp_path: Path) -> None:
    gif = tmp_path / "face.gif"
    gif.write_bytes(b"GIF89a")
    with pytest.raises(UnsupportedMedia, match="an avatar must be a video"):
        engine.avatars.add(gif)


def test_wav2lip_without_weights_is_a_clear_message(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="ENGINE_WAV2LIP_CHECKPOINT"):
        render(engine, tmp_path, text="Hi.", renderer="wav2lip")


def test_cli_reports_errors_without_a_traceback(settings: EngineSettings, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "engine", "render", "--text", " ", "--avatar", "astronaut-photo", "--out",
         str(tmp_path / "x.mp4")], capture_output=True, text=True, cwd=REPO,
        env={"ENGINE_STORAGE_ROOT": str(settings.storage_root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode == 2
    assert "error: text is empty" in run.stderr and "Traceback" not in run.stderr


# --- issue #10: decoders stop at the limits, whatever a header says ------------------------------------------------

ADDRESS_OR_PATH = re.compile(r"0x[0-9a-fA-F]{6,}|/tmp/")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    lying_mp3(d / "hour.mp3")
    lying_mkv(d / "400s.mkv")
    one_pixel_video(d / "dot.mp4")
    for channels in (1, 2, 6, 9, 64, 65):
        many_channel_wav(d / f"{channels}ch.wav", channels)
    return d


def test_the_audio_decoder_stops_at_the_limit(hostile: Path) -> None:
    with pytest.raises(MediaTooLong, match=r"hour\.mp3 lasts longer than 20 s \(decoding stopped there\)"):
        decode_audio(hostile / "hour.mp3", 8000, max_s=20)
    assert decode_audio(hostile / "1ch.wav", 8000, max_s=2).size == 16000  # exactly at the limit is fine


def test_the_video_decoder_stops_at_the_limit(hostile: Path) -> None:
    frames = list(read_frames(hostile / "400s.mkv", 160, 120, fps=5, max_s=10))
    assert len(frames) == 50  # 10 s at 5 fps of a 400 s file


def test_avatar_preprocessing_stops_at_the_template_limit(hostile: Path, tmp_path: Path) -> None:
    """What happens to a file that got past validation: the template is refused once it runs past the limit."""
    store = AvatarStore(EngineSettings(_env_file=None, storage_root=tmp_path, max_template_s=2))  # type: ignore[call-arg]
    with pytest.raises(MediaTooLong, match=r"400s\.mkv runs longer than 2 s; templates may be at most 2 s"):
        store._add_video(hostile / "400s.mkv", 5.0, 160, 120, tmp_path, "long", None, "0" * 64, None)
    assert not list(tmp_path.iterdir()), "the half-written template is removed"


def test_avatars_that_lie_or_are_too_small_are_refused(hostile: Path, tmp_path: Path) -> None:
    store = Engine(EngineSettings(_env_file=None, storage_root=tmp_path)).avatars  # type: ignore[call-arg]
    with pytest.raises(MediaTooLong, match=r"holds more than 300 s of media, although its header says 1\.0 s"):
        store.add(hostile / "400s.mkv")
    with pytest.raises(UnsupportedMedia, match="is only 1x1 pixels; a face needs a picture at least 40 pixels"):
        store.add(hostile / "dot.mp4")
    assert store.list() == []


@pytest.mark.parametrize("channels", [1, 2, 6, 9, 64])
def test_any_channel_count_is_mixed_down_without_clipping(hostile: Path, channels: int) -> None:
    """Every channel holds the same half-scale tone, so a correct mono mix is that tone: not louder, not quieter."""
    samples = decode_audio(hostile / f"{channels}ch.wav", 16000, max_s=10)
    assert samples.size == 32000
    assert float(np.abs(samples).max()) == pytest.approx(0.5, abs=0.01)


def test_more_channels_than_can_be_mixed_are_refused_plainly(hostile: Path) -> None:
    with pytest.raises(UnsupportedMedia, match=r"65ch\.wav has 65 audio channels; at most 64 can be mixed down"):
        decode_audio(hostile / "65ch.wav", 16000, max_s=10)


def test_a_64_channel_recording_renders(engine: Engine, hostile: Path, tmp_path: Path) -> None:
    result = engine.render(RenderRequest(out=tmp_path / "out.mp4", audio=hostile / "64ch.wav",
                                         avatar="astronaut-photo"))
    assert result.duration_s == pytest.approx(2.0 + engine.settings.lead_in_s + engine.settings.lead_out_s, abs=0.1)


def test_ffmpeg_messages_lose_addresses_and_paths(tmp_path: Path) -> None:
    line = ("[aost#0:0/pcm_f32le @ 0x5639f7230ac0] [enc:pcm_f32le @ 0x5639f7231540] Could not open encoder before EOF")
    assert plain_reason(line) == "Could not open encoder before EOF"
    assert plain_reason("file:/tmp/media-check-x/input: Invalid data found when processing input") == \
        "Invalid data found when processing input"
    assert plain_reason("Rate 25/1, N/A, codec tag 0x0055") == "Rate 25/1, N/A, codec tag 0x0055"
    clip = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=2", "-c:v", "libx264", str(clip))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # its index (at the end) is gone
    junk = tmp_path / "junk.mp3"
    junk.write_text("this is not audio\n" * 200)
    attempts = {"moov atom not found": lambda: list(read_frames(cut, 64, 64)),
                "is not readable media": lambda: decode_audio(junk, 16000, max_s=10)}
    for reason, attempt in attempts.items():
        with pytest.raises(CorruptMedia, match=reason) as err:
            attempt()
        assert not ADDRESS_OR_PATH.search(str(err.value)), str(err.value)
