"""Training's stage 2 (toolkit/refit.py): frozen encoders, cached features, a fresh backbone."""
import numpy as np
import pytest
import torch

from avqa_edge.runtime.text import Vocabulary
from avqa_edge.toolkit.checkpoint import load_model
from avqa_edge.toolkit.data.loader import SplitData
from avqa_edge.toolkit.data.specs import load_split
from avqa_edge.toolkit.refit import FeatureCache, encoders, freeze_encoders, trainable


@pytest.fixture(scope="module")
def model_and_data(tiny_run, tiny_spec):
    run, _ = tiny_run
    model, _ = load_model(run)
    data = SplitData(load_split(tiny_spec, "train"), Vocabulary(model.cfg.vocab), model.cfg.answers)
    data.cache_mel(model.audio_encoder.frontend)
    return model, data


def test_cached_features_are_what_the_frozen_encoders_give(model_and_data):
    model, data = model_and_data
    cache = FeatureCache(model, data, torch.device("cpu"))
    assert cache.cached and cache.a.shape[0] == len(data.questions_of)
    qs = torch.tensor([0, 5, 17, len(data) - 1])
    f, answers = cache.features(qs)
    with torch.no_grad():
        ref, _, _ = model.encode(data.batch(qs.tolist()))
    for got, want in ((f.a, ref.a), (f.v, ref.v), (f.q, ref.q)):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert torch.equal(answers, data.answers[qs])


def test_a_cache_too_large_encodes_each_batch_instead(model_and_data):
    model, data = model_and_data
    cache = FeatureCache(model, data, torch.device("cpu"), max_bytes=0)
    assert not cache.cached and not hasattr(cache, "a")
    f, answers = cache.sample(np.random.default_rng(0), 16, 4)
    assert f.a.shape[0] == f.v.shape[0] == f.q.shape[0] == answers.shape[0] == 16
    assert not f.a.requires_grad, "the frozen encoders run without gradients"


def test_cached_batches_draw_questions_across_the_split(model_and_data):
    model, data = model_and_data
    cache = FeatureCache(model, data, torch.device("cpu"))
    rng = np.random.default_rng(0)
    f, answers = cache.sample(rng, 16, 4)
    assert answers.shape == (16,)
    # distinct questions (drawn without replacement), not 4 per clip as stage 1 draws them
    qs = np.random.default_rng(0).choice(len(data), size=16, replace=False)
    assert len(set(data.clip[torch.from_numpy(qs)].tolist())) > 4


def test_stage_2_trains_all_but_the_encoders(model_and_data):
    model, _ = model_and_data
    enc = {id(p) for m in encoders(model) for p in m.parameters()}
    assert {id(p) for p in model.audio_encoder.parameters()} <= enc
    assert {id(p) for p in model.question_encoder.parameters()} <= enc
    stage2 = {id(p) for p in trainable(model, True)}
    assert not stage2 & enc
    assert stage2 | enc == {id(p) for p in model.parameters()}, "backbone, RMM and AVR all train"
    assert len(trainable(model, False)) == len(list(model.parameters()))


def test_frozen_encoders_keep_their_batchnorm_statistics(model_and_data):
    model, data = model_and_data
    model.train()
    freeze_encoders(model)
    stats = model.audio_encoder.norm_in.running_mean.clone()
    model.encode(data.batch(list(range(16))))
    assert torch.equal(model.audio_encoder.norm_in.running_mean, stats)
    assert not any(p.requires_grad for m in encoders(model) for p in m.parameters())
    assert model.backbone.training, "the rest stays in training mode"
    model.eval()


def test_reset_backbone_draws_new_weights_with_the_same_init():
    from avqa_edge.toolkit.model.backbone import Backbone
    torch.manual_seed(0)
    b = Backbone(16, (2, 3), 4, 5, heads=2)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)                              # as if trained
    first = [p.clone() for p in b.parameters()]
    torch.manual_seed(0)
    b.reset_parameters()
    torch.manual_seed(0)
    again = Backbone(16, (2, 3), 4, 5, heads=2)
    torch.manual_seed(0)
    again.reset_parameters()
    for p, q, r in zip(b.parameters(), again.parameters(), first):
        assert torch.equal(p, q), "reset draws the constructor's init"
        assert not torch.equal(p, r)
