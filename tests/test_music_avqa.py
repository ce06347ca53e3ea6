"""MUSIC-AVQA adapter: a tiny fixture in the official layout + the real val question file."""
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from avqa_edge.errors import AvqaError
from avqa_edge.runtime.signal import T_SEGMENTS
from avqa_edge.toolkit.data.music_avqa import (TIME_INDEX, answer_vocabulary, fill_question,
                                               load_feature_split, load_questions, official_tokens,
                                               parse_type)
from avqa_edge.toolkit.data.types import QUESTION_TYPES

REAL_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "music-avqa" / "avqa-val.json"

VIDEOS = ["00000028", "00000108", "00001234"]


def _record(vid, qid, typ, content, values, answer, deleted=0):
    return {"video_id": vid, "question_id": qid, "type": json.dumps(typ),
            "question_content": content, "templ_values": json.dumps(values),
            "question_deleted": deleted, "anser": answer}


RECORDS = [
    _record("00000108", 10, ["Audio", "Comparative"], "Is the <Object> louder than the <Object>?",
            ["guzheng", "piano"], "yes"),
    _record("00000028", 7, ["Audio-Visual", "Existential"], "Is the <Object> in the video always playing?",
            ["ukulele"], "no"),
    _record("00000108", 11, ["Visual", "Location"], "Where is the <FL> sounding instrument?",
            ["first"], "left"),
    _record("00001234", 12, ["Audio-Visual", "Counting"], "How many instruments are sounding in the video?",
            [], "two"),
]


def _audio(v):
    a = np.random.RandomState(v).rand(60, 128).astype(np.float32)
    a[:, 0] = np.arange(60) + 100 * v        # each second (and video) has its own marker
    return a


def _visual(v):
    x = np.random.RandomState(10 + v).rand(60, 512, 14, 14).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(60) + 100 * v
    return x


@pytest.fixture
def official(tmp_path):
    feats = tmp_path / "feats"
    (feats / "vggish").mkdir(parents=True)
    (feats / "res18_14x14").mkdir()
    for v, vid in enumerate(VIDEOS):
        np.save(feats / "vggish" / f"{vid}.npy", _audio(v))
        vis = _visual(v)
        np.save(feats / "res18_14x14" / f"{vid}.npy", vis.astype(np.float16) if v == 2 else vis)
    js = tmp_path / "avqa-val.json"
    js.write_text(json.dumps(RECORDS))
    return js, feats


def test_parse_type_and_fill():
    assert parse_type('["Audio-Visual", "Existential"]') == "Audio-Visual/Existential"
    assert parse_type(["Visual", "Location"]) == "Visual/Location"
    with pytest.raises(AvqaError, match="unknown question type"):
        parse_type('["Audio", "Temporal"]')
    with pytest.raises(AvqaError):
        parse_type("not a list")
    assert fill_question("Is the <Object> louder than the <Object>?", '["guzheng", "piano"]') \
        == "Is the guzheng louder than the piano?"
    assert fill_question("Where is the <FL> sounding instrument？", ["first"]) \
        == "Where is the first sounding instrument?"
    with pytest.raises(AvqaError, match="louder"):
        fill_question("Is the <Object> louder than the <Object>?", '["guzheng"]')


def test_feature_split(official):
    js, feats = official
    split = load_feature_split(js, feats)
    assert len(split) == 4
    # clips in order of first appearance: 00000108, 00000028, 00001234
    assert split.meta["videos"] == ["00000108", "00000028", "00001234"]
    assert [q.clip for q in split.qa] == [0, 1, 0, 2]
    q = split.qa[0]
    assert (q.question, q.answer, q.qtype) == ("Is the guzheng louder than the piano?", "yes", "Audio/Comparative")
    assert split.qa[2].question == "Where is the first sounding instrument?"
    assert split.qa[3].qtype == "Audio-Visual/Counting"
    assert answer_vocabulary(load_questions(js)) == ["left", "no", "two", "yes"]

    assert split.audio.shape == (3, T_SEGMENTS, 128) and len(split.audio) == 3
    assert split.visual.shape == (3, T_SEGMENTS, 512, 14, 14) and len(split.visual) == 3
    assert TIME_INDEX == (0, 6, 12, 18, 24, 30, 36, 42, 48, 54)
    for clip, v in enumerate([1, 0, 2]):
        a, x = split.audio[clip], split.visual[clip]
        assert a.dtype == np.float32 and a.shape == (T_SEGMENTS, 128)
        assert x.dtype == np.float32 and x.shape == (T_SEGMENTS, 512, 14, 14)
        np.testing.assert_array_equal(a[:, 0], np.arange(0, 60, 6) + 100 * v)
        np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(0, 60, 6) + 100 * v)
        np.testing.assert_array_equal(a, _audio(v)[::6])
        want = _visual(v)[::6]
        np.testing.assert_array_equal(x, want.astype(np.float16).astype(np.float32) if v == 2 else want)
    batch = split.audio[[2, 0]]
    assert batch.shape == (2, T_SEGMENTS, 128)
    np.testing.assert_array_equal(batch[1], split.audio[0])

    small = load_feature_split(js, feats, limit=2)
    assert len(small) == 2 and small.audio.shape[0] == 2


def test_malformed_records(tmp_path):
    bad = [dict(RECORDS[0]), dict(RECORDS[1])]
    del bad[1]["anser"]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(AvqaError, match=r"record 1 \(question_id 7\).*anser"):
        load_questions(p)

    bad = [dict(RECORDS[0], templ_values='["guzheng"]')]
    p.write_text(json.dumps(bad))
    with pytest.raises(AvqaError, match=r"record 0 \(question_id 10\).*placeholder"):
        load_questions(p)

    bad = [dict(RECORDS[1], type='["Audio-Visual", "Weird"]')]
    p.write_text(json.dumps(bad))
    with pytest.raises(AvqaError, match=r"question_id 7.*Audio-Visual/Weird"):
        load_questions(p)

    p.write_text("[{not json")
    with pytest.raises(AvqaError, match="not valid JSON"):
        load_questions(p)
    with pytest.raises(AvqaError, match="not found"):
        load_questions(tmp_path / "missing.json")


def test_skip_deleted_is_reported(tmp_path, caplog):
    p = tmp_path / "q.json"
    p.write_text(json.dumps([RECORDS[0], dict(RECORDS[1], question_deleted=1)]))
    assert len(load_questions(p)) == 2
    with caplog.at_level("WARNING"):
        assert len(load_questions(p, skip_deleted=True)) == 1
    assert "skipped 1 of 2" in caplog.text


def test_missing_and_misshaped_features(official):
    js, feats = official
    (feats / "res18_14x14" / "00000028.npy").unlink()
    with pytest.raises(AvqaError, match=r"video 00000028.*res18_14x14.00000028\.npy.*\(60, 512, 14, 14\)"):
        load_feature_split(js, feats)
    np.save(feats / "res18_14x14" / "00000028.npy", np.zeros((60, 512, 7, 7), np.float32))
    with pytest.raises(AvqaError, match=r"video 00000028.*shape \(60, 512, 7, 7\).*\(60, 512, 14, 14\)"):
        load_feature_split(js, feats)
    np.save(feats / "res18_14x14" / "00000028.npy", _visual(0))
    np.save(feats / "vggish" / "00001234.npy", np.zeros((30, 128), np.float32))
    with pytest.raises(AvqaError, match=r"video 00001234.*vggish.*\(60, 128\)"):
        load_feature_split(js, feats)
    with pytest.raises(AvqaError, match="feature folder not found"):
        load_feature_split(js, feats, audio_dir="nope")


@pytest.mark.skipif(not REAL_VAL.is_file(), reason="real MUSIC-AVQA file not present")
def test_real_val_file():
    raw = json.loads(REAL_VAL.read_text(encoding="utf-8"))
    recs = load_questions(REAL_VAL)
    assert len(recs) == len(raw)
    types = Counter(r["qtype"] for r in recs)
    assert set(types) == set(QUESTION_TYPES)
    placeholder = re.compile(r"<[^<>]*>")
    assert not [r for r in recs if placeholder.search(r["question"])]
    official = [len(official_tokens(r["question"])) for r in recs]
    assert max(official) <= 14          # the official dataloader pads to 14
    try:
        from avqa_edge.runtime.text import MAX_QUESTION_TOKENS, tokenize
    except ImportError:                  # pragma: no cover
        ours = official
        MAX_QUESTION_TOKENS = 14
    else:
        ours = [len(tokenize(r["question"])) for r in recs]
    over = sum(n > MAX_QUESTION_TOKENS for n in ours)
    assert over <= 0.01 * len(recs)
    answers = answer_vocabulary(recs)
    assert 30 <= len(answers) <= 42
    print(f"\nMUSIC-AVQA val: {len(recs)} records, {len(set(r['video_id'] for r in recs))} videos, "
          f"types {dict(types)}, {len(answers)} answers, max question length {max(official)} "
          f"(official split), {max(ours)} (project tokenizer; {over} over {MAX_QUESTION_TOKENS})")
