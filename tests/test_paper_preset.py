"""The `paper` preset end to end on MUSIC-AVQA-layout features (a tiny fixture)."""
import json

import numpy as np

from avqa_edge.toolkit.checkpoint import load_model
from avqa_edge.toolkit.config import TrainConfig, preset
from avqa_edge.toolkit.eval import run_eval
from avqa_edge.toolkit.train import train

VIDEOS = ["00000028", "00000108", "00001234", "00004321"]


def _record(vid, qid, typ, content, values, answer):
    return {"video_id": vid, "question_id": qid, "type": json.dumps(typ), "question_content": content,
            "templ_values": json.dumps(values), "question_deleted": 0, "anser": answer}


def _fixture(root):
    rng = np.random.default_rng(0)
    (root / "feats" / "vggish").mkdir(parents=True)
    (root / "feats" / "res18_14x14").mkdir()
    for vid in VIDEOS:
        np.save(root / "feats" / "vggish" / f"{vid}.npy", rng.random((60, 128), dtype=np.float32))
        np.save(root / "feats" / "res18_14x14" / f"{vid}.npy", rng.random((60, 512, 14, 14), dtype=np.float32).astype(np.float16))
    recs = []
    for i, vid in enumerate(VIDEOS):
        recs += [_record(vid, 10 * i, ["Audio", "Counting"], "How many instruments are sounding?", [], ["one", "two"][i % 2]),
                 _record(vid, 10 * i + 1, ["Visual", "Location"], "Where is the <Object>?", ["piano"], ["left", "right"][i % 2]),
                 _record(vid, 10 * i + 2, ["Audio-Visual", "Existential"], "Is the <Object> playing?", ["acoustic_guitar"], "yes")]
    for split in ("train", "val", "test"):
        (root / f"avqa-{split}.json").write_text(json.dumps(recs))
    return {"kind": "music-avqa", "questions": str(root), "features": str(root / "feats")}


def test_paper_preset_trains_and_evaluates_on_features(tmp_path):
    spec = _fixture(tmp_path)
    cfg = preset("paper", dim=32, heads=4, unet_base=8)            # the paper's layout at a test-sized width
    run = tmp_path / "run"
    train(run, cfg, TrainConfig(steps=3, refit_steps=3, batch_size=8, eval_every=3, val_samples=12, lr=1e-3), spec, log=lambda *_: None)
    model, config = load_model(run)
    assert model.cfg.inputs == "features" and model.rmm.slots_v.shape == (75, 32 * 14 * 14)
    assert "acoustic_guitar" in config["model"]["vocab"]           # MUSIC-AVQA names stay one token
    out = run_eval(run, tmp_path / "eval.json", [], sweep=False, log=lambda *_: None)
    assert out["n"] == 12 and set(out["scenarios"]["audio_missing"]) == {"zero_fill", "rmm", "avr", "rmm+avr"}
