"""AVQAModel on the `edge` preset: shapes, missing-segment handling, clip sharing, the Eq. 8
losses and a short training run whose loss falls."""
import copy
import pytest
import torch

from avqa_edge.runtime import signal as sig
from avqa_edge.toolkit.config import ModelConfig, preset
from avqa_edge.toolkit.model.avqa import FILL_METHODS, AVQAModel
from avqa_edge.toolkit.model.rmm import recall_loss

VOCAB = ["<pad>", "<unk>", "is", "the", "violin", "piano", "playing", "how", "many", "instruments",
         "are", "sounding", "what", "on", "left"]
ANSWERS = ["yes", "no", "one", "two", "piano", "violin"]
T = sig.T_SEGMENTS
MISSING_METHODS = ("zero_fill", "rmm", "rmm+avr")


def _model(seed: int = 0, **overrides) -> AVQAModel:
    torch.manual_seed(seed)
    return AVQAModel(preset("edge", vocab=VOCAB, answers=ANSWERS, **overrides))


def _clips(u: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (u, T, sig.FRAMES_PER_SEGMENT, sig.FRAME_H, sig.FRAME_W, 3),
                           dtype=torch.uint8, generator=g)
    audio = torch.rand(u, T * sig.SEGMENT_SAMPLES, generator=g) * 1.6 - 0.8
    return frames, audio


def _tokens(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    toks = torch.zeros(b, 14, dtype=torch.int64)
    for i in range(b):
        n = 3 + i % 5
        toks[i, :n] = torch.randint(2, len(VOCAB), (n,), generator=g)
    return toks


def _batch(u: int = 2, seed: int = 0):
    frames, audio = _clips(u, seed)
    return {"frames": frames, "audio": audio, "tokens": _tokens(u, seed)}


def _mask(u, absent):
    m = torch.ones(u, T)
    for i, s in absent:
        m[i, s] = 0
    return m


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions on a shared CPU: one thread is faster and steadier than several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return _model().eval()


# ---- forward ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", FILL_METHODS)
def test_forward_logits_shape_every_method(model, method):
    batch = _batch(3)
    ma = _mask(3, [(0, 1), (0, 2), (1, 0)] + [(2, s) for s in range(T)])     # clip 2: no audio at all
    mv = _mask(3, [(0, 5), (1, 3), (1, 4)])
    with torch.no_grad():
        out = model(batch, ma, mv, method=method)
        full = model(batch, method=method)
    assert out.shape == (3, len(ANSWERS)) and full.shape == (3, len(ANSWERS))
    assert torch.isfinite(out).all() and torch.isfinite(full).all()
    # missingness changes the answer scores (the masks are actually used)
    assert not torch.allclose(out, full)


def test_complete_input_same_logits_for_every_method(model):
    """With nothing missing, every method leaves the features alone."""
    batch = _batch(2)
    with torch.no_grad():
        outs = [model(batch, method=m) for m in FILL_METHODS]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])


def test_unknown_method_raises(model):
    with pytest.raises(ValueError):
        model(_batch(1), method="magic")


# ---- encode ----------------------------------------------------------------------------------
def _boom(*args, **kwargs):
    raise AssertionError("the encoder of an absent modality ran")


def test_audio_absent_from_batch_is_not_encoded(monkeypatch):
    m = _model().eval()
    monkeypatch.setattr(m.audio_encoder, "forward", _boom)
    monkeypatch.setattr(m.audio_encoder, "from_mel", _boom)
    batch = _batch(2)
    with torch.no_grad():
        f, ma, mv = m.encode(batch, torch.zeros(2, T), None)
        assert f.a.shape == (2, T, m.cfg.dim) and torch.equal(f.a, torch.zeros_like(f.a))
        assert torch.equal(ma, torch.zeros(2, T)) and torch.equal(mv, torch.ones(2, T))
        assert f.v.abs().sum() > 0
        for method in FILL_METHODS:
            assert m(batch, torch.zeros(2, T), None, method=method).shape == (2, len(ANSWERS))
        # the patch is live: a single present segment does reach the encoder
        with pytest.raises(AssertionError, match="absent modality"):
            m.encode(batch, _mask(2, [(i, s) for i in range(2) for s in range(1, T)]), None)
        # the cached-mel path is skipped as well
        mel_batch = {"mel": torch.zeros(2, T, sig.N_MELS, sig.N_FRAMES), "frames": batch["frames"],
                     "tokens": batch["tokens"]}
        f2, _, _ = m.encode(mel_batch, torch.zeros(2, T), None)
        assert torch.equal(f2.a, torch.zeros_like(f2.a))


def test_visual_absent_from_batch_is_not_encoded(monkeypatch):
    m = _model().eval()
    monkeypatch.setattr(m.visual_encoder, "forward", _boom)
    batch = _batch(2)
    with torch.no_grad():
        f, _, _ = m.encode(batch, None, torch.zeros(2, T))
        assert f.v.shape == (2, T, m.cfg.dim, m.cfg.map_h, m.cfg.map_w)
        assert torch.equal(f.v, torch.zeros_like(f.v))
        assert f.a.abs().sum() > 0


def test_partial_mask_present_segments_equal_complete_encoding(model):
    batch = _batch(2)
    ma = _mask(2, [(0, 0), (0, 4), (1, 9), (1, 3)])
    mv = _mask(2, [(0, 1), (1, 4), (1, 5), (1, 9)])
    with torch.no_grad():
        full, _, _ = model.encode(batch)
        part, qa, qv = model.encode(batch, ma, mv)
    pa, pv = ma.bool(), mv.bool()
    torch.testing.assert_close(part.a[pa], full.a[pa], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part.v[pv], full.v[pv], rtol=1e-5, atol=1e-5)
    assert torch.equal(part.a[~pa], torch.zeros_like(part.a[~pa]))
    assert torch.equal(part.v[~pv], torch.zeros_like(part.v[~pv]))
    assert full.a[~pa].abs().sum() > 0                      # would have been non-zero
    torch.testing.assert_close(part.q, full.q)
    assert torch.equal(qa, ma) and torch.equal(qv, mv)


@pytest.mark.parametrize("method", MISSING_METHODS)
def test_absent_audio_content_does_not_reach_the_model(model, method):
    batch = _batch(2)
    ma = _mask(2, [(0, 2), (0, 3), (1, 7)])
    mv = _mask(2, [(1, 2)])
    changed = dict(batch)
    audio = batch["audio"].clone()
    g = torch.Generator().manual_seed(99)
    for i, s in [(0, 2), (0, 3), (1, 7)]:
        audio[i, s * sig.SEGMENT_SAMPLES:(s + 1) * sig.SEGMENT_SAMPLES] = torch.rand(sig.SEGMENT_SAMPLES, generator=g) * 2 - 1
    changed["audio"] = audio
    with torch.no_grad():
        ref = model(batch, ma, mv, method=method)
        out = model(changed, ma, mv, method=method)
        assert torch.equal(out, ref)
        # the same change with the segments present does move the logits
        assert not torch.allclose(model(changed, None, mv, method=method), model(batch, None, mv, method=method))


@pytest.mark.parametrize("method", MISSING_METHODS)
def test_absent_visual_content_does_not_reach_the_model(model, method):
    batch = _batch(2)
    mv = _mask(2, [(0, 0), (1, 5), (1, 6)])
    ma = _mask(2, [(0, 9)])
    changed = dict(batch)
    frames = batch["frames"].clone()
    for i, s in [(0, 0), (1, 5), (1, 6)]:
        frames[i, s] = 255 - frames[i, s]
    changed["frames"] = frames
    with torch.no_grad():
        assert torch.equal(model(changed, ma, mv, method=method), model(batch, ma, mv, method=method))
        assert not torch.allclose(model(changed, ma, None, method=method), model(batch, ma, None, method=method))


def test_absent_mel_content_does_not_reach_the_model(model):
    """The cached-mel training path blanks absent segments too."""
    g = torch.Generator().manual_seed(5)
    batch = {"mel": torch.randn(2, T, sig.N_MELS, sig.N_FRAMES, generator=g), "frames": _clips(2)[0],
             "tokens": _tokens(2)}
    ma = _mask(2, [(0, 1), (1, 8)])
    changed = dict(batch, mel=batch["mel"].clone())
    changed["mel"][0, 1] += 3.0
    changed["mel"][1, 8] = torch.randn(sig.N_MELS, sig.N_FRAMES, generator=g)
    with torch.no_grad():
        assert torch.equal(model(changed, ma, None, method="rmm+avr"), model(batch, ma, None, method="rmm+avr"))


# ---- fill / enhance --------------------------------------------------------------------------
def test_rmm_fill_keeps_present_and_replaces_absent(model):
    batch = _batch(2)
    ma = _mask(2, [(0, 0), (0, 1), (1, 6)])
    mv = _mask(2, [(0, 5), (1, 0), (1, 6)])
    with torch.no_grad():
        f, qa, qv = model.encode(batch, ma, mv)
        a, v = model.fill(f, qa, qv, "rmm")
        pa, pv = model.rmm.pseudo_audio(f.v, f.q), model.rmm.pseudo_visual(f.a, f.q)
    ka, kv = ma.bool(), mv.bool()
    assert torch.equal(a[ka], f.a[ka]) and torch.equal(v[kv], f.v[kv])
    torch.testing.assert_close(a[~ka], pa[~ka])
    torch.testing.assert_close(v[~kv], pv[~kv])
    assert a[~ka].abs().sum() > 0 and v[~kv].abs().sum() > 0


def test_zero_fill_leaves_zeros(model):
    batch = _batch(2)
    ma, mv = _mask(2, [(0, 3)]), _mask(2, [(1, 1)])
    with torch.no_grad():
        f, qa, qv = model.encode(batch, ma, mv)
        a, v = model.fill(f, qa, qv, "zero_fill")
    assert torch.equal(a, f.a) and torch.equal(v, f.v)
    assert torch.equal(a[0, 3], torch.zeros_like(a[0, 3])) and torch.equal(v[1, 1], torch.zeros_like(v[1, 1]))


@pytest.mark.parametrize("method", ["avr", "rmm+avr"])
def test_avr_fill_keeps_present_segments(method):
    m = _model(1).eval()
    with torch.no_grad():                      # a non-trivial denoiser (the U-Net's out conv starts at zero)
        torch.nn.init.normal_(m.denoiser.out.weight, std=0.05)
    batch = _batch(2)
    ma = _mask(2, [(0, 0), (0, 1), (1, 6)])
    mv = _mask(2, [(0, 5), (1, 0), (1, 6)])
    with torch.no_grad():
        f, qa, qv = m.encode(batch, ma, mv)
        a, v = m.fill(f, qa, qv, method)
        a_rmm, v_rmm = m.fill(f, qa, qv, "rmm" if method == "rmm+avr" else "zero_fill")
    ka, kv = ma.bool(), mv.bool()
    torch.testing.assert_close(a[ka], f.a[ka], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v[kv], f.v[kv], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[~ka], a_rmm[~ka]) and not torch.allclose(v[~kv], v_rmm[~kv])


def test_rmm_avr_eval_is_deterministic():
    m = _model(2).eval()
    with torch.no_grad():
        torch.nn.init.normal_(m.denoiser.out.weight, std=0.05)
    batch = _batch(2, seed=3)
    ma, mv = _mask(2, [(0, 1), (1, 2), (1, 3)]), _mask(2, [(0, 4), (1, 9)])
    with torch.no_grad():
        torch.manual_seed(0)
        x = m(batch, ma, mv, method="rmm+avr")
        torch.manual_seed(12345)                     # global RNG state must not matter
        y = m(batch, ma, mv, method="rmm+avr")
    assert torch.equal(x, y)


# ---- clip sharing ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", FILL_METHODS)
def test_clip_index_sharing_equals_expanded_batch(model, method):
    frames, audio = _clips(2, seed=4)
    tokens = _tokens(4, seed=4)
    idx = torch.tensor([0, 0, 1, 1])
    ma, mv = _mask(2, [(0, 2), (1, 5), (1, 6)]), _mask(2, [(0, 7), (1, 0)])
    shared = {"frames": frames, "audio": audio, "tokens": tokens, "clip_index": idx}
    expanded = {"frames": frames[idx], "audio": audio[idx], "tokens": tokens}
    with torch.no_grad():
        a = model(shared, ma, mv, method=method)
        b = model(expanded, ma[idx], mv[idx], method=method)
    assert a.shape == (4, len(ANSWERS))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a[0], a[1])            # different questions on one clip differ


# ---- losses (Eq. 8) and training ---------------------------------------------------------------
LOSS_KEYS = {"ce_complete", "ce_audio_pseudo", "ce_visual_pseudo", "rmm", "ave"}


@pytest.mark.parametrize("use_avr", [False, True])
def test_losses_finite_and_backward(use_avr):
    m = _model(3).train()
    batch = _batch(4, seed=5)
    answers = torch.tensor([0, 1, 4, 5])
    f, _, _ = m.encode(batch)
    miss_a = _mask(4, [(i, s) for i in range(4) for s in range(T) if (i + s) % 3 == 0])
    miss_v = _mask(4, [(i, s) for i in range(4) for s in range(T) if (i + s) % 4 == 1])
    torch.manual_seed(0)
    out = m.losses(f, answers, miss_a, miss_v, use_avr_in_loss=use_avr, max_pairs=16)
    assert set(out) == LOSS_KEYS
    for k, v in out.items():
        assert v.dim() == 0 and torch.isfinite(v), k
        assert float(v.detach()) > 0, k
    sum(out.values()).backward()
    grads = {"rmm.slots_a": m.rmm.slots_a, "rmm.slots_v": m.rmm.slots_v, "rmm.log_tau": m.rmm.log_tau,
             "denoiser.out": m.denoiser.out.weight, "backbone.head": m.backbone.head[-1].weight,
             "audio_encoder.proj": m.audio_encoder.proj.weight, "visual_encoder": m.visual_encoder.body[-1].weight,
             "question_encoder": m.question_encoder.embed.weight}
    for name, p in grads.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_avr_phase_pseudo_terms_read_the_avr_output_and_train_the_rmm():
    """In the AVR phase (--avr-finetune-frac) the pseudo CE terms score the backbone on the
    AVR-enhanced pair, not on RMM's raw output, and the straight-through estimator still
    passes their gradient to the slot memory (the sampler itself gets none). The phase samples
    from the schedule's last step, not from the inference start (avr_start)."""
    import torch.nn.functional as F
    m = _model(6).eval()                             # eval: no dropout, so values compare exactly
    f, _, _ = m.encode(_batch(2, seed=7))
    answers = torch.tensor([1, 4])
    miss_a = _mask(2, [(0, s) for s in range(T)] + [(1, 3)])
    miss_v = _mask(2, [(1, s) for s in range(T)] + [(0, 5)])
    pa, pv = m.pseudo(f)
    plain = m.pseudo_ce(f, pa, pv, answers, miss_a, miss_v, False)
    phase = m.pseudo_ce(f, pa, pv, answers, miss_a, miss_v, True)
    ones = torch.ones_like(miss_a)
    with torch.no_grad():
        a_hat = miss_a[..., None] * f.a + (1 - miss_a[..., None]) * pa
        ea, _ = m.enhance(a_hat, f.v, miss_a, ones, from_end=True)
        _, ev = m.enhance(f.a, miss_v[..., None, None, None] * f.v + (1 - miss_v[..., None, None, None]) * pv, ones, miss_v,
                          from_end=True)
        want_a = F.cross_entropy(m.backbone(ea, f.v, f.q), answers)
        want_v = F.cross_entropy(m.backbone(f.a, ev, f.q), answers)
        ea_inference, _ = m.enhance(a_hat, f.v, miss_a, ones)              # from avr_start = 0.75
    assert m.cfg.avr_start == 0.75 and not torch.allclose(ea, ea_inference)
    torch.testing.assert_close(phase["ce_audio_pseudo"], want_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(phase["ce_visual_pseudo"], want_v, rtol=1e-5, atol=1e-6)
    assert abs(float(phase["ce_visual_pseudo"].detach() - plain["ce_visual_pseudo"].detach())) > 1e-4
    (phase["ce_audio_pseudo"] + phase["ce_visual_pseudo"]).backward()
    assert m.rmm.slots_a.grad is not None and m.rmm.slots_a.grad.abs().sum() > 0
    assert m.rmm.slots_v.grad is not None and m.rmm.slots_v.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.denoiser.parameters())


def test_losses_without_rmm_or_avr_have_no_such_terms():
    m = _model(4, use_rmm=False, use_avr=False).train()
    f, _, _ = m.encode(_batch(2))
    out = m.losses(f, torch.tensor([0, 1]), _mask(2, [(0, 0)]), _mask(2, [(1, 1)]), use_avr_in_loss=True)
    assert set(out) == {"ce_complete", "ce_audio_pseudo", "ce_visual_pseudo"}
    assert m.rmm is None and m.denoiser is None


def test_short_training_run_lowers_the_loss():
    """8 questions on 2 shared clips (clip_index), Adam lr 3e-3, 30 steps: the Eq. 8 total falls."""
    m = _model(5).train()
    frames, audio = _clips(2, seed=6)
    batch = {"frames": frames, "audio": audio, "tokens": _tokens(8, seed=6),
             "clip_index": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])}
    answers = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    miss_a = _mask(8, [(i, s) for i in range(8) for s in range(T) if (i + 2 * s) % 5 == 0])
    miss_v = _mask(8, [(i, s) for i in range(8) for s in range(T) if (2 * i + s) % 5 == 1])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def total(seed):
        torch.manual_seed(seed)                      # the same denoising draws for a fair comparison
        f, _, _ = m.encode(batch)
        out = m.losses(f, answers, miss_a, miss_v, use_avr_in_loss=False, max_pairs=16)
        return sum(out.values()), out

    with torch.no_grad():
        before, parts_before = total(1000)
    rmm_before = copy.deepcopy(m.rmm)
    for step in range(30):
        loss, _ = total(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after, parts_after = total(1000)
    assert torch.isfinite(after)
    assert float(after) < 0.5 * float(before), (float(before), float(after))
    for k in ("ce_complete", "ce_audio_pseudo", "ce_visual_pseudo"):
        assert float(parts_after[k]) < 0.1 * float(parts_before[k]), k
    # the recall loss's targets (the encoder features) move as the encoders learn: compare the
    # trained generator with the untrained one on the same, final features
    with torch.no_grad():
        f, _, _ = m.encode(batch)
        recall = {}
        for name, rmm in (("trained", m.rmm), ("untrained", rmm_before)):
            pa, pv = rmm.pseudo_audio(f.v, f.q), rmm.pseudo_visual(f.a, f.q)
            recall[name] = float(recall_loss(f.a, pa) + recall_loss(f.v, pv))
    assert recall["trained"] < 0.8 * recall["untrained"], recall


def test_absent_audio_is_blanked_before_the_encoder_in_train_mode():
    """In train mode BatchNorm mixes segments through batch statistics: only the blanking of the
    raw input (not the output mask) keeps an absent segment's content out of present features."""
    m = _model(6).train()
    batch = _batch(2, seed=7)
    ma = _mask(2, [(0, 4), (1, 1)])
    mv = _mask(2, [(0, 2)])
    changed = dict(batch, audio=batch["audio"].clone(), frames=batch["frames"].clone())
    changed["audio"][0, 4 * sig.SEGMENT_SAMPLES:5 * sig.SEGMENT_SAMPLES] *= -0.3
    changed["audio"][1, 1 * sig.SEGMENT_SAMPLES:2 * sig.SEGMENT_SAMPLES] = 0.9
    changed["frames"][0, 2] = 255 - changed["frames"][0, 2]
    with torch.no_grad():
        ref, _, _ = m.encode(batch, ma, mv)
        out, _, _ = m.encode(changed, ma, mv)
        assert torch.equal(out.a, ref.a) and torch.equal(out.v, ref.v)
        # without the masks the same change does reach the other segments' features
        full_ref, _, _ = m.encode(batch)
        full_out, _, _ = m.encode(changed)
    assert not torch.allclose(full_out.a[1, 5], full_ref.a[1, 5])
    assert not torch.allclose(full_out.v[1, 5], full_ref.v[1, 5])


def test_config_without_later_fields_loads_as_before_with_its_old_hash():
    """Runs written before `audio_heads` and `avr_start` existed load as one head with the reverse
    process starting at the schedule's last step, and keep their hash (bundles and results name
    them by it); the default is 4 heads, and a width they do not divide is refused."""
    import dataclasses
    import hashlib
    import json
    from avqa_edge.errors import AvqaError
    from avqa_edge.toolkit.config import ModelConfig
    old = dataclasses.asdict(ModelConfig(audio_heads=1, avr_start=None))
    del old["audio_heads"], old["avr_start"], old["video_expert"]
    old["unet_mults"] = list(old["unet_mults"])
    cfg = ModelConfig.from_dict(old)
    assert cfg.audio_heads == 1 and cfg.avr_start is None
    assert cfg.hash() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert ModelConfig().audio_heads == 4 and ModelConfig().hash() != cfg.hash()
    with pytest.raises(AvqaError, match="divide"):
        ModelConfig(dim=64, audio_heads=3)
    with pytest.raises(AvqaError, match="avr_start"):
        ModelConfig(avr_start=0.1)


def test_train_config_of_a_single_stage_run_resumes_in_one_stage():
    """Runs saved before stage 2 existed have no refit_steps: they resume as they were trained."""
    from avqa_edge.errors import AvqaError
    from avqa_edge.toolkit.config import TrainConfig
    old = TrainConfig().to_dict()
    del old["refit_steps"]
    assert TrainConfig.from_dict(old).refit_steps == 0
    assert TrainConfig.from_dict(TrainConfig(refit_steps=7).to_dict()).refit_steps == 7
    assert TrainConfig().refit_steps > 0, "two stages by default"
    with pytest.raises(AvqaError, match="refit"):
        TrainConfig(refit_steps=-1)


# ---- the video expert ------------------------------------------------------------------------------
def _feats(b: int, m):
    g = torch.Generator().manual_seed(3)
    c, h, w = m.cfg.dim, m.cfg.map_h, m.cfg.map_w
    return (torch.randn(b, T, c, generator=g), torch.randn(b, T, c, h, w, generator=g),
            torch.randn(b, 1 + m.cfg.q_len, c, generator=g))


def test_video_expert_answers_only_when_the_video_is_missing_in_every_segment():
    m = _model().eval()
    assert m.cfg.video_expert and m.video_expert is not None, "on in the edge preset"
    a, v, q = _feats(4, m)
    ma, mv = torch.ones(4, T), torch.ones(4, T)
    mv[1] = 0             # video missing in every segment -> the expert
    mv[2, :4] = 0         # video partly missing -> shared
    ma[3] = mv[3] = 0     # both missing -> shared
    with torch.no_grad():
        got = m.answer(a, v, q, ma, mv)
        shared, expert = m.backbone(a, v, q), m.video_expert(a, v, q)
    for row, want in ((0, shared), (1, expert), (2, shared), (3, shared)):
        assert torch.allclose(got[row], want[row], atol=1e-5), row
    assert not torch.allclose(expert[1], shared[1], atol=1e-3)        # a different network, not a copy
    plain = _model(video_expert=False).eval()
    with torch.no_grad():
        assert torch.equal(plain.answer(a, v, q, ma, mv), plain.backbone(a, v, q))
    assert plain.video_expert is None and preset("paper").video_expert is False


def test_configs_without_the_field_load_without_an_expert_and_keep_their_hash():
    """Runs and bundles written before the video expert existed rebuild as they were trained."""
    cfg = preset("edge", vocab=VOCAB, answers=ANSWERS, video_expert=False)
    old = cfg.to_dict()
    del old["video_expert"]
    back = ModelConfig.from_dict(old)
    assert back.video_expert is False and back.hash() == cfg.hash()
    assert preset("edge", vocab=VOCAB, answers=ANSWERS).hash() != cfg.hash()
