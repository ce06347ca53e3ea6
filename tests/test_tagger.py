"""The auxiliary event-tagging loss (toolkit/model/tagger.py): it trains the encoders from
the built-in benchmark's per-segment labels and never becomes part of the model."""
import numpy as np
import torch
from safetensors.torch import load_file

from avqa_edge.toolkit.config import TrainConfig, preset
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.data.specs import load_split
from avqa_edge.toolkit.model.avqa import AVQAModel
from avqa_edge.toolkit.model.tagger import EventTagger, batch_labels
from avqa_edge.toolkit.train import train
from avqa_edge.runtime.text import Vocabulary


def _setup(tiny_spec):
    split = load_split(tiny_spec, "train")
    vocab = Vocabulary.build([qa.question for qa in split.qa])
    cfg = preset("edge")
    cfg.vocab, cfg.answers = vocab.words[2:], sorted({qa.answer for qa in split.qa})
    return SplitData(split, Vocabulary(cfg.vocab), cfg.answers), cfg


def test_batches_carry_the_labels_of_each_questions_clip(tiny_spec):
    data, _ = _setup(tiny_spec)
    batch = data.batch(data.sample(np.random.default_rng(0), 16, 4))
    labels = batch_labels(batch)
    assert set(labels) == {"sounding", "level", "cell", "moving"}
    clips = data.clip[batch["questions"]]
    assert torch.equal(labels["sounding"], data.labels["sounding"][clips])
    assert labels["cell"].shape == (16, 10, 2, 3)


def test_tagging_loss_trains_the_encoders(tiny_spec):
    torch.manual_seed(0)
    data, cfg = _setup(tiny_spec)
    model = AVQAModel(cfg)
    data.cache_mel(model.audio_encoder.frontend)
    tagger = EventTagger(cfg.dim, data.labels["sounding"].shape[-1])
    enc = list(model.audio_encoder.parameters()) + list(model.visual_encoder.parameters())
    opt = torch.optim.Adam(enc + list(tagger.parameters()), lr=3e-3)
    batch = data.batch(data.sample(np.random.default_rng(1), 32, 4))
    losses = []
    for _ in range(40):
        f, _, _ = model.encode(batch)
        loss = tagger.loss(f.a, f.v, batch_labels(batch))
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert model.visual_encoder.body[0][0].weight.grad.abs().sum() > 0, "the gradient reaches the visual encoder"
            assert model.audio_encoder.body[0][0].weight.grad.abs().sum() > 0, "and the audio encoder"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_tagger_weights_stay_out_of_the_model(tiny_spec, tmp_path):
    cfg = TrainConfig(steps=4, refit_steps=0, batch_size=16, eval_every=4, val_samples=16)
    train(tmp_path / "tag", preset("edge"), cfg, tiny_spec, log=lambda *_: None)
    last = load_file(str(tmp_path / "tag" / "last.safetensors"))
    assert any(k.startswith("tagger.") for k in last), "saved for resume"
    assert not any(k.startswith("tagger.") for k in load_file(str(tmp_path / "tag" / "model.safetensors")))
    cfg.tag_weight = 0.0
    train(tmp_path / "off", preset("edge"), cfg, tiny_spec, log=lambda *_: None)
    assert not any(k.startswith("tagger.") for k in load_file(str(tmp_path / "off" / "last.safetensors")))
