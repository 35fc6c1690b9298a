"""bridge.media_check: ffprobe decides what an upload is, and refuses what the engine should never see."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import pytest

from bridge.media_check import CheckedMedia, MediaLimits, check_media
from engine import EngineSettings, packets
from engine.errors import CorruptMedia, EngineError, MediaTooLong, UnsupportedMedia
from engine.media import validate_audio, validate_template
from tests.bridge_fixtures import was_connected
from tests.conftest import ffmpeg
from tests.hostile_media import lying_mkv, lying_mp3, many_channel_wav, one_pixel_video, packed_mkv

LIMITS = MediaLimits(max_duration_s=10)
SINE = ("-f", "lavfi", "-i", "sine=frequency=440:duration=3")
PICTURE = ("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=3")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small real files made with ffmpeg, plus broken and hostile ones."""
    d = tmp_path_factory.mktemp("media")
    ffmpeg(*SINE, str(d / "tone.wav"))
    ffmpeg(*SINE, "-c:a", "libmp3lame", str(d / "tone.mp3"))
    ffmpeg(*SINE, "-c:a", "aac", str(d / "tone.m4a"))
    ffmpeg("-f", "lavfi", "-i", "sine=duration=12", str(d / "long.wav"))
    for ext in ("png", "jpg", "webp"):
        ffmpeg(*PICTURE, "-frames:v", "1", str(d / f"face.{ext}"))
    ffmpeg("-f", "lavfi", "-i", "color=size=4200x16", "-frames:v", "1", str(d / "wide.png"))
    clip = (*PICTURE, *SINE, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")
    ffmpeg(*clip, str(d / "clip.mp4"))
    ffmpeg(*clip, "-movflags", "+faststart", str(d / "faststart.mp4"))
    ffmpeg(*PICTURE, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(d / "silent.mp4"))
    for name in ("clip.mp4", "faststart.mp4", "face.jpg"):
        data = (d / name).read_bytes()
        (d / f"half-{name}").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("Hello, this is not a recording.\n" * 20)
    shutil.copy(d / "notes.txt", d / "notes.mp3")  # a misleading name on disk must not steer detection
    shutil.copy(d / "tone.wav", d / "tone-on-disk.mp3")
    return d



@pytest.mark.parametrize(("name", "ext"), [("tone.wav", ".wav"), ("tone.mp3", ".mp3"), ("tone.m4a", ".m4a"),
                                           ("clip.mp4", ".m4a"), ("tone-on-disk.mp3", ".wav")])
def test_valid_audio(media: Path, name: str, ext: str) -> None:
    checked = check_media(media / name, "audio", LIMITS, user_filename=f"upload{ext}")
    assert checked.kind == "audio"
    assert checked.ext == ext, "the stored extension comes from the content"
    assert checked.duration_s == pytest.approx(3, abs=0.1)
    stored = media / f"stored-{name}{checked.ext}"
    shutil.copy(media / name, stored)
    validate_audio(stored, 10)  # what passes here passes the engine's own check later


@pytest.mark.parametrize(("name", "kind", "ext"), [("face.png", "image", ".png"), ("face.jpg", "image", ".jpg"),
                                                   ("face.webp", "image", ".webp"), ("clip.mp4", "video", ".mp4")])
def test_valid_avatar(media: Path, name: str, kind: str, ext: str) -> None:
    checked = check_media(media / name, "avatar", LIMITS, user_filename=name)
    assert (checked.kind, checked.ext, checked.width, checked.height) == (kind, ext, 320, 240)
    assert checked.duration_s == (0 if kind == "image" else pytest.approx(3, abs=0.1))
    stored = media / f"stored-{name}{checked.ext}"
    shutil.copy(media / name, stored)
    validate_template(stored, 10, 3840 * 2160)


def test_result_is_small_and_typed(media: Path) -> None:
    assert check_media(media / "tone.wav", "audio", LIMITS) == CheckedMedia("audio", ".wav", 3.0, 0, 0, "WAV")


def reject(path: Path, expect: str, error: type[EngineError], match: str, **kwargs: object) -> EngineError:
    with pytest.raises(error, match=match) as err:
        check_media(path, expect, kwargs.pop("limits", LIMITS), **kwargs)  # type: ignore[arg-type]
    assert str(err.value).startswith(f"{kwargs.get('field', expect)}: ")
    assert err.value.field == kwargs.get("field", expect)
    assert not re.search(r"0x[0-9a-fA-F]{6,}|media-check-|/tmp/", str(err.value)), "no address or server path"
    return err.value


@pytest.mark.parametrize("name", ["notes.txt", "notes.mp3"])
def test_not_media(media: Path, name: str) -> None:
    err = reject(media / name, "audio", UnsupportedMedia, "is not readable media", user_filename="voice.bin")
    assert "use audio in WAV, MP3, MP4/MOV, AAC, FLAC, Ogg" in str(err)


def test_truncated_mp4_without_index(media: Path) -> None:
    reject(media / "half-clip.mp4", "avatar", CorruptMedia, "incomplete MP4/MOV", user_filename="me.mp4")


def test_truncated_faststart_mp4(media: Path) -> None:
    """Its header is intact, so only counting the packets that are really there shows it is cut."""
    reject(media / "half-faststart.mp4", "avatar", CorruptMedia, "is incomplete: stream 0 has", user_filename="me.mp4")
    reject(media / "half-faststart.mp4", "audio", CorruptMedia, "incomplete")


def test_truncated_jpeg_fails_decoding(media: Path) -> None:
    reject(media / "half-face.jpg", "avatar", CorruptMedia, "could not be decoded", user_filename="me.jpg")


def test_wav_named_mp4(media: Path) -> None:
    err = reject(media / "tone.wav", "audio", UnsupportedMedia, "is named .mp4 but the content is WAV",
                 user_filename="C:\\Users\\me\\voice.mp4", field="audio_url")
    assert str(err).startswith("audio_url: voice.mp4 is named .mp4 ")
    assert "rename it to .wav" in str(err)


def test_unclaiming_user_names_are_fine(media: Path) -> None:
    for name in ("voice", "voice.bin", "../../voice.WAV", "\x1b[31mvoice.wav"):
        assert check_media(media / "tone.wav", "audio", LIMITS, user_filename=name).ext == ".wav"


def test_hls_playlist_is_refused_without_connecting(media: Path, trap: socket.socket, tmp_path: Path) -> None:
    port = trap.getsockname()[1]
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:{port}/seg.ts\n"
                        "#EXT-X-ENDLIST\n")
    for expect in ("audio", "avatar"):
        reject(playlist, expect, UnsupportedMedia, "is an HLS playlist, which is not accepted", user_filename="a.m3u8")
    assert not was_connected(trap), "ffprobe must not connect anywhere"


def test_wrong_kind(media: Path) -> None:
    reject(media / "tone.wav", "avatar", UnsupportedMedia,
           r"is in WAV format, which is not accepted as avatar; use a video \(")
    reject(media / "face.png", "audio", UnsupportedMedia, "not accepted as audio")
    reject(media / "silent.mp4", "audio", UnsupportedMedia, "has no audio stream")


def test_too_long(media: Path) -> None:
    err = reject(media / "long.wav", "audio", MediaTooLong, r"is 12\.0 s long; the limit is 10 s",
                 user_filename="speech.wav")
    assert err.code == "media_too_long"


def test_resolution_caps(media: Path) -> None:
    reject(media / "wide.png", "avatar", UnsupportedMedia, "is 4200x16; the limit is")
    reject(media / "face.png", "avatar", UnsupportedMedia, "is 320x240",
           limits=MediaLimits(max_duration_s=10, max_pixels=320 * 240 - 1))


def test_stream_cap(media: Path) -> None:
    reject(media / "clip.mp4", "avatar", UnsupportedMedia, "has 2 streams; at most 1",
           limits=MediaLimits(max_duration_s=10, max_streams=1))


def test_limits_follow_the_engine() -> None:
    settings = EngineSettings(_env_file=None, max_audio_s=42, max_template_pixels=1000)  # type: ignore[call-arg]
    assert MediaLimits.for_engine("audio", settings).max_duration_s == 42
    assert MediaLimits.for_engine("avatar", settings).max_pixels == 1000
    assert MediaLimits.for_engine("avatar", settings).min_side == settings.min_face_px == 40


# --- issue #10: lengths are measured, not read from headers ------------------------------------------------------

DEFAULTS = EngineSettings(_env_file=None)  # type: ignore[call-arg]
AUDIO = MediaLimits.for_engine("audio", DEFAULTS)
AVATAR = MediaLimits.for_engine("avatar", DEFAULTS)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    lying_mp3(d / "hour.mp3")
    lying_mkv(d / "400s.mkv")
    one_pixel_video(d / "dot.mp4")
    packed_mkv(d / "packed.mkv")
    ffmpeg("-f", "lavfi", "-i", "color=size=36x36", "-frames:v", "1", str(d / "small.png"))
    for channels in (64, 65):
        many_channel_wav(d / f"{channels}ch.wav", channels)
    return d


def test_an_mp3_whose_header_understates_an_hour_is_too_long(hostile: Path) -> None:
    """The Xing/Info frame says 16 frames (0.4 s); the packets say an hour. Refused after reading 300 s of them."""
    err = reject(hostile / "hour.mp3", "audio", MediaTooLong, r"talk\.mp3 holds more than 300 s of media, although "
                 r"its header says 0\.4 s; the limit is 300 s", limits=AUDIO, user_filename="talk.mp3")
    assert err.code == "media_too_long"


def test_an_mkv_whose_duration_element_says_1_s_is_too_long(hostile: Path) -> None:
    reject(hostile / "400s.mkv", "avatar", MediaTooLong, r"holds more than 300 s of media, although its header "
           r"says 1\.0 s", limits=AVATAR, user_filename="me.mkv")


def test_the_measured_length_is_the_real_one(hostile: Path) -> None:
    """Under a limit they fit, the lying files are measured at their real lengths, not their headers' claims."""
    assert check_media(hostile / "hour.mp3", "audio", MediaLimits(max_duration_s=7200)).duration_s == \
        pytest.approx(3600, abs=1)
    assert check_media(hostile / "400s.mkv", "avatar", MediaLimits(max_duration_s=600)).duration_s == \
        pytest.approx(400, abs=1)


@pytest.mark.parametrize("name", ["tone.wav", "tone.m4a"])
def test_a_file_exactly_at_the_limit_passes(media: Path, name: str) -> None:
    """AAC's priming packet sits at a negative timestamp that decoders drop; it does not count as length."""
    assert check_media(media / name, "audio", MediaLimits(max_duration_s=3)).duration_s == 3.0


def test_packed_timestamps_are_too_long(hostile: Path) -> None:
    """100 frames whose timestamps fit in 1.1 s, each lasting 40 ms: the packets' durations add up to 4 s."""
    reject(hostile / "packed.mkv", "avatar", MediaTooLong, r"holds more than 2 s of media, although its header says "
           r"1\.1 s", limits=MediaLimits(max_duration_s=2, max_fps=30))


def test_reading_stops_at_the_frame_cap(media: Path) -> None:
    """However the timestamps look, no more video packets are read than the length limit at the top frame rate."""
    found = packets.read(["ffprobe", "-v", "error", *packets.PACKET_ARGS, str(media / "clip.mp4")],
                         max_video_packets=10)
    assert (found.stopped, found.streams[0].count) == ("frames", 11)
    assert MediaLimits(max_duration_s=10, max_fps=25).max_frames == 251


@pytest.mark.parametrize(("name", "size"), [("dot.mp4", "1x1"), ("small.png", "36x36")])
def test_a_picture_too_small_for_a_face_is_refused(hostile: Path, name: str, size: str) -> None:
    err = reject(hostile / name, "avatar", UnsupportedMedia, f"is only {size} pixels; a face needs a picture at least "
                 "40 pixels wide and tall; use a larger photo or video", limits=AVATAR, user_filename=name)
    assert err.code == "unsupported_media"


def test_64_channels_pass_and_65_are_refused_plainly(hostile: Path) -> None:
    assert check_media(hostile / "64ch.wav", "audio", AUDIO).duration_s == pytest.approx(2)
    reject(hostile / "65ch.wav", "audio", UnsupportedMedia, "has 65 audio channels; at most 64 can be mixed down to "
           "mono; export it as mono or stereo", limits=AUDIO)


def test_engine_validators_measure_too(hostile: Path) -> None:
    """A CLI user's file gets the same treatment from the engine's own checks."""
    with pytest.raises(MediaTooLong, match=r"holds more than 300 s of media, although its header says 0\.4 s"):
        validate_audio(hostile / "hour.mp3", 300)
    with pytest.raises(MediaTooLong, match=r"holds more than 300 s of media, although its header says 1\.0 s"):
        validate_template(hostile / "400s.mkv", 300, 3840 * 2160)
    with pytest.raises(UnsupportedMedia, match="is only 1x1 pixels"):
        validate_template(hostile / "dot.mp4", 300, 3840 * 2160, min_side=80)
    with pytest.raises(UnsupportedMedia, match="has 65 audio channels"):
        validate_audio(hostile / "65ch.wav", 300)
