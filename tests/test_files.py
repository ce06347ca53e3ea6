"""Custom data as files: write_split -> read_manifest round trip and error messages."""
import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
sf = pytest.importorskip("soundfile")

from avqa_edge.errors import AvqaError, DataError  # noqa: E402
from avqa_edge.runtime.signal import (FRAME_H, FRAME_W, FRAMES_PER_SEGMENT, SAMPLE_RATE,  # noqa: E402
                                      SEGMENT_SAMPLES, T_SEGMENTS)
from avqa_edge.toolkit.data.files import CUSTOM_QTYPE, LetterboxWarning, read_manifest, write_split  # noqa: E402
from avqa_edge.toolkit.data.types import QA, RawSplit  # noqa: E402

N = 2


def _split() -> RawSplit:
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W]
    frames = np.zeros((N, T_SEGMENTS, FRAMES_PER_SEGMENT, FRAME_H, FRAME_W, 3), np.uint8)
    for n in range(N):
        for s in range(T_SEGMENTS):
            for k in range(FRAMES_PER_SEGMENT):
                img = np.stack([(xx * 5 + s * 20) % 256, (yy * 7 + k * 60) % 256,
                                np.full_like(xx, 40 + 100 * n)], -1)
                x0 = (s * 4 + k * 2) % (FRAME_W - 8)
                img[8:16, x0:x0 + 8] = [255, 255, 0]                 # a moving square
                img = img + rng.randint(0, 8, img.shape)            # a little texture
                frames[n, s, k] = np.clip(img, 0, 255)
    t = np.arange(T_SEGMENTS * SEGMENT_SAMPLES) / SAMPLE_RATE
    audio = np.stack([np.round(12000 * np.sin(2 * np.pi * f * t)) for f in (440.0, 1000.0)]).astype(np.int16)
    qa = [QA(0, "Is the violin playing?", "yes", "Audio-Visual/Existential"),
          QA(1, "How many instruments are sounding?", "two", "Audio-Visual/Counting"),
          QA(0, "What is on the left?", "piano", CUSTOM_QTYPE)]
    return RawSplit(frames=frames, audio=audio, qa=qa, meta={"source": "test"})


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("custom")
    split = _split()
    manifest = write_split(split, out)
    return split, manifest


def test_round_trip(written):
    split, manifest = written
    info = json.loads((manifest.parent / "split.json").read_text())
    back = read_manifest(manifest)
    assert back.frames.shape == split.frames.shape and back.frames.dtype == np.uint8
    diff = np.abs(back.frames.astype(int) - split.frames.astype(int))
    if info["video_lossless"]:          # FFV1 / PNG: bit exact
        assert diff.max() == 0, info["video_codec"]
    else:                               # MJPG at quality 100
        assert diff.mean() < 4, info["video_codec"]
    assert back.audio.dtype == np.int16 and back.audio.shape == split.audio.shape
    assert np.abs(back.audio.astype(int) - split.audio.astype(int)).max() <= 1
    assert [(q.clip, q.question, q.answer, q.qtype) for q in back.qa] == \
        [(q.clip, q.question, q.answer, q.qtype) for q in split.qa]
    print(f"\nvideo codec: {info['video_codec']} in .{info['video_container']}, "
          f"lossless={info['video_lossless']}, max frame diff {diff.max()}")
    with pytest.raises(AvqaError, match=r"line 3: answer 'piano' is not one of"):
        read_manifest(manifest, answers=["yes", "two"])


def test_other_rates_and_sizes(tmp_path):
    # 10 fps, 64x96 video: frame j is uniform grey 2*j; expect frames floor((s + k/2) * 10)
    fps, n_frames = 10, 101
    w = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"FFV1"), fps, (96, 64))
    assert w.isOpened()
    for j in range(n_frames):
        w.write(np.full((64, 96, 3), 2 * j, np.uint8))
    w.release()
    # 16 kHz stereo, 10 s: 500 Hz sine in both channels
    t = np.arange(10 * 16000) / 16000
    sine = 0.5 * np.sin(2 * np.pi * 500 * t)
    sf.write(str(tmp_path / "a.wav"), np.stack([sine, sine], 1), 16000, subtype="PCM_16")
    (tmp_path / "q.jsonl").write_text(json.dumps(
        {"video": "v.avi", "audio": str(tmp_path / "a.wav"), "question": "q?", "answer": "a"}) + "\n")
    split = read_manifest(tmp_path / "q.jsonl")
    assert split.frames.shape == (1, T_SEGMENTS, FRAMES_PER_SEGMENT, FRAME_H, FRAME_W, 3)
    got = split.frames[0, :, :, 0, 0, 0].reshape(-1)
    np.testing.assert_array_equal(got, 2 * (np.arange(T_SEGMENTS * FRAMES_PER_SEGMENT) * 5))
    want = 0.5 * np.sin(2 * np.pi * 500 * np.arange(T_SEGMENTS * SEGMENT_SAMPLES) / SAMPLE_RATE)
    got = split.audio[0] / 32768.0
    assert np.abs(got[200:-200] - want[200:-200]).max() < 0.02
    assert split.qa[0].qtype == CUSTOM_QTYPE


def _line(manifest: Path, rec, n_good=1):
    """A manifest whose line n_good + 1 is `rec` (a dict or a raw string)."""
    good = json.loads(manifest.read_text().splitlines()[0])
    text = "".join(json.dumps(good) + "\n" for _ in range(n_good))
    text += (rec if isinstance(rec, str) else json.dumps(rec)) + "\n"
    path = manifest.parent / "case.jsonl"
    path.write_text(text)
    return path


def _short_clip(folder: Path):
    w = cv2.VideoWriter(str(folder / "short.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 2, (FRAME_W, FRAME_H))
    for _ in range(10):                                      # 5 s
        w.write(np.zeros((FRAME_H, FRAME_W, 3), np.uint8))
    w.release()
    sf.write(str(folder / "short.wav"), np.zeros(5 * SAMPLE_RATE, np.int16), SAMPLE_RATE)
    (folder / "corrupt.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 10)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)


@pytest.mark.parametrize("case, pattern", [
    ("bad_json", r"line 2: invalid JSON"),
    ("not_object", r"line 2: expected a JSON object"),
    ("no_question", r"line 2: missing key\(s\) 'question'"),
    ("no_answer", r"line 2: missing key\(s\) 'answer'"),
    ("bad_type", r"line 2: 'type' must be a non-empty string"),
    ("missing_video", r"line 2: video file not found: .*nope\.avi"),
    ("missing_audio", r"line 2: audio file not found: .*nope\.wav"),
    ("corrupt_video", r"line 2: .*corrupt\.avi"),
    ("corrupt_audio", r"line 2: cannot read audio .*corrupt\.wav"),
    ("short_video", r"line 2: video .*short\.avi lasts 5\.00 s"),
    ("short_audio", r"line 2: audio .*short\.wav lasts 5\.00 s"),
])
def test_errors_name_the_line(written, case, pattern):
    _, manifest = written
    folder = manifest.parent
    if not (folder / "short.avi").exists():
        _short_clip(folder)
    good = json.loads(manifest.read_text().splitlines()[0])
    rec = {
        "bad_json": '{"video": "x.avi", ',
        "not_object": "[1, 2]",
        "no_question": {k: v for k, v in good.items() if k != "question"},
        "no_answer": {k: v for k, v in good.items() if k != "answer"},
        "bad_type": dict(good, type="  "),
        "missing_video": dict(good, video="nope.avi"),
        "missing_audio": dict(good, audio="nope.wav"),
        "corrupt_video": dict(good, video="corrupt.avi"),
        "corrupt_audio": dict(good, audio="corrupt.wav"),
        "short_video": dict(good, video="short.avi"),
        "short_audio": dict(good, audio="short.wav"),
    }[case]
    with pytest.raises(AvqaError, match=pattern) as e:
        read_manifest(_line(manifest, rec))
    assert "case.jsonl" in str(e.value)


def test_missing_manifest_and_bad_split(tmp_path):
    with pytest.raises(AvqaError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")
    split = _split()
    split.audio = split.audio.astype(np.float32)
    with pytest.raises(AvqaError, match="split.audio must be int16"):
        write_split(split, tmp_path / "out")


def test_codec_fallback_to_mjpg(tmp_path, monkeypatch):
    import avqa_edge.toolkit.data.files as files
    monkeypatch.setattr(files, "VIDEO_CODECS", (("ZZZZ", ".avi", True), ("MJPG", ".avi", False)))
    split = _split()
    manifest = write_split(split, tmp_path)
    info = json.loads((tmp_path / "split.json").read_text())
    assert (info["video_codec"], info["video_lossless"]) == ("MJPG", False)
    back = read_manifest(manifest)
    diff = np.abs(back.frames.astype(int) - split.frames.astype(int))
    assert diff.mean() < 4
    np.testing.assert_array_equal(back.audio, split.audio)


# ----------------------------------------------------------------------------- honesty

def _video(path: Path, w: int, h: int, draw=None, fps: int = 2, seconds: int = T_SEGMENTS):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    assert writer.isOpened()
    img = np.full((h, w, 3), 90, np.uint8)
    if draw is not None:
        draw(img)
    for _ in range(fps * seconds):
        writer.write(img)
    writer.release()


def _wav(path: Path):
    sf.write(str(path), np.zeros(T_SEGMENTS * SAMPLE_RATE, np.int16) + 300, SAMPLE_RATE)


def _manifest(folder: Path, records) -> Path:
    path = folder / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_other_aspect_ratios_are_letterboxed_once_not_stretched(tmp_path):
    def square(img):                         # a 54 x 54 white square in the middle of 96 x 54
        img[:, 21:75] = 255
    _video(tmp_path / "wide1.avi", 96, 54, square)
    _video(tmp_path / "wide2.avi", 96, 54, square)
    _wav(tmp_path / "a.wav")
    recs = [{"video": v, "audio": "a.wav", "question": "Is it square?", "answer": "yes"}
            for v in ("wide1.avi", "wide2.avi")]
    with pytest.warns(LetterboxWarning) as caught:
        split = read_manifest(_manifest(tmp_path, recs))
    boxed = [w for w in caught if issubclass(w.category, LetterboxWarning)]
    assert len(boxed) == 1, "one warning per manifest"
    assert "2 of 2 videos" in str(boxed[0].message) and "96x54" in str(boxed[0].message)
    assert split.meta["letterboxed"] == 2
    frame = split.frames[0, 0, 0].astype(int)                 # (32, 48, 3): the picture is 48 x 27
    assert (frame[:2] == 0).all() and (frame[-3:] == 0).all(), "black bars above and below"
    assert (frame[2:29, :, 0] > 50).all(), "the picture itself"
    ys, xs = np.nonzero(frame[..., 0] > 200)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert abs(height - width) <= 1, f"the square stays square ({width} x {height}), not stretched"


def test_same_aspect_ratio_is_resized_without_warning(tmp_path):
    import warnings
    _video(tmp_path / "v.avi", 96, 64)
    _wav(tmp_path / "a.wav")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LetterboxWarning)
        split = read_manifest(_manifest(tmp_path, [{"video": "v.avi", "audio": "a.wav", "question": "q?",
                                                    "answer": "a"}]))
    assert split.meta["letterboxed"] == 0 and (split.frames[0, 0, 0] == 90).all()


def test_letterbox_impossible_is_refused(tmp_path):
    _video(tmp_path / "strip.avi", 400, 20)
    _wav(tmp_path / "a.wav")
    rec = {"video": "strip.avi", "audio": "a.wav", "question": "q?", "answer": "a"}
    with pytest.raises(DataError, match=r"line 1: video .*strip\.avi is 400x20; letterboxed .* would be 48x2 px"):
        read_manifest(_manifest(tmp_path, [rec]))


def test_own_question_types_keep_their_own_columns(written, tmp_path):
    from avqa_edge.runtime.text import Vocabulary
    from avqa_edge.toolkit.data.loader import SplitData
    from avqa_edge.toolkit.scoring import list_types, markdown_table, score
    _, manifest = written
    recs = [json.loads(line) for line in manifest.read_text().splitlines()]
    recs[0]["type"], recs[1]["type"] = "Drums/Tempo", "Visual/Colour"
    split = read_manifest(_manifest(manifest.parent, recs))
    assert [q.qtype for q in split.qa] == ["Drums/Tempo", "Visual/Colour", CUSTOM_QTYPE]
    data = SplitData(split, Vocabulary.build([q.question for q in split.qa]), ["yes", "two", "piano"])
    assert list_types(data) == [CUSTOM_QTYPE, "Drums/Tempo", "Visual/Colour"]
    acc = score(data, np.arange(3), np.array([0, 0, 2]))
    assert acc["Drums/Tempo"] == 1.0 and acc["Visual/Colour"] == 0.0 and acc[CUSTOM_QTYPE] == 1.0
    head, _, row = markdown_table({"complete": {"zero_fill": acc}}).splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = dict(zip(cols, [c.strip() for c in row.strip("|").split("|")]))
    assert cells["Drums/Tempo"] == "100.0" and cells["Visual/Colour"] == "0.0" and cells[CUSTOM_QTYPE] == "100.0"
    written_back = write_split(split, tmp_path / "again")
    assert [json.loads(line).get("type") for line in written_back.read_text().splitlines()] == \
        ["Drums/Tempo", "Visual/Colour", None]


def test_unknown_evaluation_answers_are_counted_and_placed(written):
    from avqa_edge.runtime.text import Vocabulary
    from avqa_edge.toolkit.data.loader import SplitData, UnknownAnswerWarning
    _, manifest = written
    split = read_manifest(manifest)
    vocab = Vocabulary.build([q.question for q in split.qa])
    with pytest.warns(UnknownAnswerWarning, match=r"2 of 3 validation answers are not in the answer list") as caught:
        data = SplitData(split, vocab, ["yes"], strict_answers=False, name="validation")
    message = str(caught[0].message)
    assert f"{manifest}, line 2: 'two'" in message and f"{manifest}, line 3: 'piano'" in message
    assert data.unknown_answers == 2 and data.answers.tolist() == [0, -1, -1]
    with pytest.raises(DataError, match=r"q\w*\.jsonl, line 2: answer 'two' is not in the answer list"):
        SplitData(split, vocab, ["yes"])


def test_question_of_unknown_words_names_its_line(written):
    from avqa_edge.runtime.text import Vocabulary
    from avqa_edge.toolkit.data.loader import SplitData
    _, manifest = written
    lines = manifest.read_text().splitlines()
    rec = dict(json.loads(lines[0]), question="Zyx qwv?")
    path = manifest.parent / "unknown_words.jsonl"
    path.write_text("\n".join(lines[:2]) + "\n\n" + json.dumps(rec) + "\n")     # a blank line 3
    split = read_manifest(path)
    vocab = Vocabulary.build([q.question for q in read_manifest(manifest).qa])
    with pytest.raises(DataError, match=r"unknown_words\.jsonl, line 4 \('Zyx qwv\?'\): none of the question's words"):
        SplitData(split, vocab, ["yes", "two", "piano"], strict_answers=False)
