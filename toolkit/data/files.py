"""Custom data as ordinary files: video files + WAV files + one JSONL manifest.

Manifest (``questions.jsonl``), one JSON object per line, one line per question::

    {"video": "videos/clip_00000.avi", "audio": "audio/clip_00000.wav",
     "question": "Is the violin playing?", "answer": "yes", "type": "Audio-Visual/Existential"}

* ``video`` / ``audio``: paths relative to the manifest's folder (or absolute). Questions
  that share the same (video, audio) pair share one clip; each distinct file is decoded once.
* ``question``, ``answer``: non-empty strings (required).
* ``type``: optional, any non-empty name (MUSIC-AVQA's nine or the data set's own): each name
  is kept as its own type, so eval tables give it its own column. Records without it get
  qtype ``"Custom"`` (CUSTOM_QTYPE).
* Blank lines are ignored; other keys are ignored. Line numbers in errors are 1-based; the
  split's meta keeps each question's line (``question_lines``), so that later messages about a
  question (an answer outside the model's list, a question of unknown words) name it too.

Decoding (``read_manifest``):

* video (OpenCV): frame k of segment s is the frame shown at time t = s + k / F
  (F = FRAMES_PER_SEGMENT), i.e. frame index floor(t * fps) from the file's reported fps,
  for s < T = T_SEGMENTS; frames are read sequentially (no seeking, exact for any codec),
  resized to FRAME_W x FRAME_H (INTER_AREA; untouched if already that size) and
  converted BGR -> RGB. Only the first T seconds are decoded. Frames of another aspect ratio
  than FRAME_W:FRAME_H (beyond ASPECT_TOLERANCE) are letterboxed, never stretched: scaled to
  fit, centred, black bars around, with one warning per manifest (LetterboxWarning). A frame
  whose picture would keep less than MIN_LETTERBOX of the frame's width or height is refused
  (DataError): too little of it would reach the model.
* audio (soundfile): channels are averaged to mono; if the rate is not SAMPLE_RATE the
  signal is resampled with numpy only (no scipy): a Hamming-windowed-sinc low-pass FIR at
  0.9 x the new Nyquist frequency when downsampling, then linear interpolation at the
  new sample times. The first T seconds are kept as int16 (float * 32768, rounded, so
  16-bit PCM at SAMPLE_RATE round-trips exactly).
* A clip must cover T seconds; a shortfall up to DURATION_TOLERANCE_S (50 ms: container
  rounding) is accepted (the sampled frames all lie before T - 1/F s; missing audio
  samples become silence); more is an error.

Writing (``write_split``): each clip becomes ``videos/clip_NNNNN.avi`` (T*F frames at F fps,
RGB -> BGR) + ``audio/clip_NNNNN.wav`` (int16 mono at SAMPLE_RATE), plus
``questions.jsonl`` and ``split.json`` (codec used, fps, the split's meta). The video codec
is the first of FFV1 (lossless), 'png ' (lossless), MJPG (quality 100, lossy) that
OpenCV's backend can open for writing.
"""
import json
import math
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from avqa_edge.errors import AvqaError, DataError
from avqa_edge.runtime.signal import (FRAME_H, FRAME_W, FRAMES_PER_SEGMENT, SAMPLE_RATE,
                                      SEGMENT_SAMPLES, T_SEGMENTS)
from avqa_edge.toolkit.data.types import QA, RawSplit

PathLike = Union[str, Path]

CUSTOM_QTYPE = "Custom"
MANIFEST_NAME = "questions.jsonl"
DURATION_TOLERANCE_S = 0.05
ASPECT_TOLERANCE = 0.02        # relative difference of width / height still resized as is
MIN_LETTERBOX = 0.25           # a letterboxed picture keeps at least this share of width and height
# (fourcc, extension, lossless) in order of preference
VIDEO_CODECS: Tuple[Tuple[str, str, bool], ...] = (
    ("FFV1", ".avi", True),
    ("png ", ".avi", True),
    ("MJPG", ".avi", False),
)


class LetterboxWarning(UserWarning):
    """Videos of another aspect ratio than the model's frame were letterboxed."""


def _cv2():
    try:
        import cv2  # noqa: WPS433 (optional dependency)
    except ImportError:
        raise AvqaError("reading/writing video files needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def _sf():
    try:
        import soundfile  # noqa: WPS433
    except ImportError:
        raise AvqaError("reading/writing audio files needs soundfile: pip install soundfile") from None
    return soundfile


# ----------------------------------------------------------------------------- writing

def _open_writer(cv2, path: Path, fourcc: str, size: Tuple[int, int]):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(FRAMES_PER_SEGMENT), size)
    if not writer.isOpened():
        writer.release()
        return None
    if fourcc == "MJPG":
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    return writer


def write_split(split: RawSplit, out_dir: PathLike) -> Path:
    """Write `split` as video + WAV files and a manifest; returns the manifest's path."""
    cv2, sf = _cv2(), _sf()
    frames = np.asarray(split.frames)
    audio = np.asarray(split.audio)
    n = len(frames)
    want_f = (n, T_SEGMENTS, FRAMES_PER_SEGMENT)
    if frames.ndim != 6 or frames.shape[:3] != want_f or frames.shape[5] != 3 or frames.dtype != np.uint8:
        raise DataError(f"split.frames must be uint8 (N, {T_SEGMENTS}, {FRAMES_PER_SEGMENT}, H, W, 3), "
                        f"got {frames.dtype} {frames.shape}")
    if audio.shape != (n, T_SEGMENTS * SEGMENT_SAMPLES) or audio.dtype != np.int16:
        raise DataError(f"split.audio must be int16 ({n}, {T_SEGMENTS * SEGMENT_SAMPLES}), "
                        f"got {audio.dtype} {audio.shape}")
    if not split.qa:
        raise DataError("the split has no questions to write")
    for i, q in enumerate(split.qa):
        if not 0 <= q.clip < n:
            raise DataError(f"question {i} refers to clip {q.clip}, but the split has {n} clips")
        if not isinstance(q.qtype, str) or not q.qtype.strip():
            raise DataError(f"question {i + 1} has no question type (qtype {q.qtype!r})")

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[3:5]
    codec = None
    video_rel, audio_rel = [], []
    for i in range(n):
        writer = None
        if codec is None:          # probe codecs on the first clip
            for fourcc, ext, lossless in VIDEO_CODECS:
                path = out / "videos" / f"clip_{i:05d}{ext}"
                writer = _open_writer(cv2, path, fourcc, (w, h))
                if writer is not None:
                    codec = (fourcc, ext, lossless)
                    break
                path.unlink(missing_ok=True)
            if codec is None:
                raise DataError("OpenCV cannot write video with any of "
                                + ", ".join(repr(c[0]) for c in VIDEO_CODECS))
        else:
            path = out / "videos" / f"clip_{i:05d}{codec[1]}"
            writer = _open_writer(cv2, path, codec[0], (w, h))
            if writer is None:
                raise DataError(f"OpenCV cannot open {path} for writing")
        try:
            for frame in frames[i].reshape(-1, h, w, 3):
                writer.write(np.ascontiguousarray(frame[..., ::-1]))   # RGB -> BGR
        finally:
            writer.release()
        wav = out / "audio" / f"clip_{i:05d}.wav"
        sf.write(str(wav), audio[i], SAMPLE_RATE, subtype="PCM_16")
        video_rel.append(path.relative_to(out).as_posix())
        audio_rel.append(wav.relative_to(out).as_posix())

    manifest = out / MANIFEST_NAME
    with open(manifest, "w", encoding="utf-8") as f:
        for q in split.qa:
            rec = {"video": video_rel[q.clip], "audio": audio_rel[q.clip],
                   "question": q.question, "answer": q.answer}
            if q.qtype != CUSTOM_QTYPE:
                rec["type"] = q.qtype
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    info = {"manifest": MANIFEST_NAME, "clips": n, "questions": len(split.qa),
            "video_codec": codec[0].strip(), "video_container": codec[1].lstrip("."),
            "video_lossless": codec[2], "fps": FRAMES_PER_SEGMENT, "frame_size": [w, h],
            "audio": f"PCM_16 mono {SAMPLE_RATE} Hz", "meta": split.meta}
    with open(out / "split.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, default=str)
    return manifest


# ----------------------------------------------------------------------------- reading

def _fit(cv2, frame: np.ndarray, path: Path, where: str) -> Tuple[np.ndarray, bool]:
    """One BGR frame (h, w, 3) -> ((FRAME_H, FRAME_W, 3), letterboxed or not): resized when its
    aspect ratio is the model's, else scaled to fit and centred between black bars."""
    h, w = frame.shape[:2]
    if (h, w) == (FRAME_H, FRAME_W):
        return frame, False
    if abs(w * FRAME_H - h * FRAME_W) <= ASPECT_TOLERANCE * h * FRAME_W:
        return cv2.resize(frame, (FRAME_W, FRAME_H), interpolation=cv2.INTER_AREA), False
    scale = min(FRAME_W / w, FRAME_H / h)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    if nw < MIN_LETTERBOX * FRAME_W or nh < MIN_LETTERBOX * FRAME_H:
        raise DataError(f"{where}: video {path} is {w}x{h}; letterboxed into the model's {FRAME_W}x{FRAME_H} frame "
                        f"its picture would be {nw}x{nh} px: crop it nearer to {FRAME_W}:{FRAME_H} first")
    out = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    top, left = (FRAME_H - nh) // 2, (FRAME_W - nw) // 2
    out[top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, True


def _decode_video(path: Path, where: str) -> Tuple[np.ndarray, Optional[Tuple[int, int]]]:
    """-> ((T, F, FRAME_H, FRAME_W, 3) uint8 RGB, the source (width, height) if letterboxed else None)."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"{where}: cannot open video {path} (unreadable or corrupt file)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0:
            raise DataError(f"{where}: video {path} reports no valid frame rate ({fps})")
        times = [s + k / FRAMES_PER_SEGMENT for s in range(T_SEGMENTS) for k in range(FRAMES_PER_SEGMENT)]
        wanted = [int(math.floor(t * fps + 1e-6)) for t in times]
        # frames needed to show that the clip lasts T seconds (within the tolerance)
        needed = max(wanted[-1] + 1, int(math.ceil((T_SEGMENTS - DURATION_TOLERANCE_S) * fps - 1e-6)))
        picked: Dict[int, np.ndarray] = {}
        targets = set(wanted)
        count = 0
        while count < needed:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if count in targets:
                picked[count] = frame
            count += 1
    finally:
        cap.release()
    if count == 0:
        raise DataError(f"{where}: no frame could be decoded from video {path} (corrupt or unsupported file)")
    if count < needed:
        raise DataError(f"{where}: video {path} lasts {count / fps:.2f} s ({count} frames at {fps:g} fps); "
                        f"clips must be at least {T_SEGMENTS} s long")
    out = np.empty((len(wanted), FRAME_H, FRAME_W, 3), dtype=np.uint8)
    boxed = None
    for j, idx in enumerate(wanted):
        frame = picked[idx]   # needed > max(wanted), so every wanted frame was read
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        size = frame.shape[1], frame.shape[0]
        frame, letterboxed = _fit(cv2, frame, path, where)
        if letterboxed:
            boxed = size
        out[j] = frame[..., ::-1]   # BGR -> RGB
    return out.reshape(T_SEGMENTS, FRAMES_PER_SEGMENT, FRAME_H, FRAME_W, 3), boxed


def _lowpass(x: np.ndarray, cutoff: float, taps: int = 129) -> np.ndarray:
    """Hamming-windowed-sinc FIR low-pass; cutoff in cycles/sample (0 < cutoff < 0.5)."""
    m = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * m) * np.hamming(taps)
    h /= h.sum()
    return np.convolve(x, h, mode="same")


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """1-D float signal from sr_in to sr_out (numpy only; see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    if sr_in == sr_out or len(x) == 0:
        return x
    if sr_out < sr_in:
        x = _lowpass(x, 0.45 * sr_out / sr_in)
    n_out = int(math.floor(len(x) * sr_out / sr_in + 1e-9))
    t_out = np.arange(n_out) * (sr_in / sr_out)
    return np.interp(t_out, np.arange(len(x)), x)


def _decode_audio(path: Path, where: str) -> np.ndarray:
    """-> (T * SEGMENT_SAMPLES,) int16 mono at SAMPLE_RATE."""
    sf = _sf()
    n_out = T_SEGMENTS * SEGMENT_SAMPLES
    try:
        with sf.SoundFile(str(path)) as f:
            sr, total = int(f.samplerate), int(f.frames)
            # a little extra beyond T seconds keeps the FIR's edge effects out of the kept part
            want = int(math.ceil((T_SEGMENTS + 0.05) * sr))
            data = f.read(frames=min(want, total) if total > 0 else want, dtype="float64", always_2d=True)
    except AvqaError:
        raise
    except Exception as e:   # soundfile raises LibsndfileError / RuntimeError / TypeError ...
        raise DataError(f"{where}: cannot read audio {path} (unreadable or corrupt file: {e})") from None
    if sr <= 0 or data.size == 0:
        raise DataError(f"{where}: audio {path} holds no samples")
    mono = data.mean(axis=1)
    if len(mono) < (T_SEGMENTS - DURATION_TOLERANCE_S) * sr - 1e-6:
        raise DataError(f"{where}: audio {path} lasts {len(mono) / sr:.2f} s; "
                        f"clips must be at least {T_SEGMENTS} s long")
    wave = resample(mono, sr, SAMPLE_RATE)[:n_out]
    if len(wave) < n_out:
        wave = np.concatenate([wave, np.zeros(n_out - len(wave))])
    return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)


def _resolve(base: Path, value, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {key!r} must be a non-empty path string, got {value!r}")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise DataError(f"{where}: {key} file not found: {p}")
    return p


def read_manifest(path: PathLike, answers: Optional[Sequence[str]] = None) -> RawSplit:
    """Read a JSONL manifest (format in the module docstring) into a RawSplit.

    `answers`: if given (a model's answer list), every answer must be one of them.
    Errors raise DataError naming the manifest line and the file concerned.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest}")
    base = manifest.parent
    allowed = set(answers) if answers is not None else None
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {manifest}: {e}") from None

    clips: Dict[Tuple[Path, Path], int] = {}
    clip_lines: List[int] = []
    qa: List[QA] = []
    lines_of: List[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{manifest}, line {lineno}"
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: invalid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in ("video", "audio", "question", "answer") if k not in rec]
        if missing:
            raise DataError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")
        question, answer = rec["question"], rec["answer"]
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: 'question' must be a non-empty string, got {question!r}")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{where}: 'answer' must be a non-empty string, got {answer!r}")
        answer = answer.strip()
        if allowed is not None and answer not in allowed:
            raise DataError(f"{where}: answer {answer!r} is not one of the model's {len(allowed)} answers")
        qtype = rec.get("type")
        if qtype is None:
            qtype = CUSTOM_QTYPE
        elif not isinstance(qtype, str) or not qtype.strip():
            raise DataError(f"{where}: 'type' must be a non-empty string (or left out), got {qtype!r}")
        qtype = qtype.strip()
        video = _resolve(base, rec["video"], "video", where)
        audio = _resolve(base, rec["audio"], "audio", where)
        key = (video.resolve(), audio.resolve())
        if key not in clips:
            clips[key] = len(clips)
            clip_lines.append(lineno)
        qa.append(QA(clip=clips[key], question=question.strip(), answer=answer, qtype=qtype))
        lines_of.append(lineno)
    if not qa:
        raise DataError(f"manifest {manifest} holds no records")

    videos: Dict[Path, np.ndarray] = {}
    sounds: Dict[Path, np.ndarray] = {}
    n = len(clips)
    frames = np.empty((n, T_SEGMENTS, FRAMES_PER_SEGMENT, FRAME_H, FRAME_W, 3), dtype=np.uint8)
    pcm = np.empty((n, T_SEGMENTS * SEGMENT_SAMPLES), dtype=np.int16)
    boxed: Dict[Path, Tuple[int, int]] = {}
    for (vpath, apath), c in clips.items():
        where = f"{manifest}, line {clip_lines[c]}"
        if vpath not in videos:
            videos[vpath], size = _decode_video(vpath, where)
            if size is not None:
                boxed[vpath] = size
        if apath not in sounds:
            sounds[apath] = _decode_audio(apath, where)
        frames[c] = videos[vpath]
        pcm[c] = sounds[apath]
    if boxed:
        first, (w, h) = next(iter(boxed.items()))
        warnings.warn(f"{manifest}: {len(boxed)} of {len(videos)} videos have another aspect ratio than the "
                      f"model's {FRAME_W}x{FRAME_H} frame (e.g. {first}: {w}x{h}); they are letterboxed "
                      f"(black bars), not stretched", LetterboxWarning, stacklevel=2)
    meta = {"source": "manifest", "manifest": str(manifest), "clips": n, "questions": len(qa),
            "question_lines": lines_of, "letterboxed": len(boxed),
            "videos": [str(v) for v, _ in clips], "audio": [str(a) for _, a in clips]}
    return RawSplit(frames=frames, audio=pcm, qa=qa, meta=meta)
