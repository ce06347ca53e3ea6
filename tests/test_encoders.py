"""Encoders: the exportable conv-DFT log-mel front end against the numpy reference, and the
output shapes / padding behaviour of the audio, visual, question encoders and projections."""
import numpy as np
import pytest
import torch

from avqa_edge.toolkit.config import preset
from avqa_edge.runtime import signal as sig
from avqa_edge.toolkit.model.encoders import (AudioEncoder, FeatureProjections, LogMel, QuestionEncoder,
                                              VisualEncoder, sinusoidal)

# measured on CPU: max |torch - numpy| ~1.5e-6 on noise, ~2.4e-4 on sines (only in bins at the
# LOG_EPS floor, log ~ -11); relative error everywhere < 2e-5
RTOL = ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors on a shared CPU: one thread is faster and steadier than several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _compare(wave: np.ndarray) -> float:
    ref = sig.log_mel(wave)
    out = LogMel()(torch.from_numpy(wave.astype(np.float32))).numpy()
    assert out.shape == ref.shape == (wave.shape[0], sig.N_MELS, sig.N_FRAMES)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    return float(np.abs(out - ref).max())


def test_logmel_matches_numpy_on_noise():
    rng = np.random.default_rng(0)
    wave = rng.uniform(-1, 1, (4, sig.SEGMENT_SAMPLES)).astype(np.float32)
    quiet = 1e-3 * rng.standard_normal((2, sig.SEGMENT_SAMPLES)).astype(np.float32)
    _compare(np.concatenate([wave, quiet]))


@pytest.mark.parametrize("freq", [60.0, 440.0, 1000.0, 2500.0, 3900.0])
def test_logmel_matches_numpy_on_sines(freq):
    t = np.arange(sig.SEGMENT_SAMPLES) / sig.SAMPLE_RATE
    wave = np.stack([0.5 * np.sin(2 * np.pi * freq * t), 0.05 * np.cos(2 * np.pi * freq * t + 0.3)])
    _compare(wave.astype(np.float32))


def test_logmel_silence_is_log_eps_and_sine_peaks_at_its_band():
    lm = LogMel()
    silent = lm(torch.zeros(1, sig.SEGMENT_SAMPLES))
    torch.testing.assert_close(silent, torch.full_like(silent, float(np.log(sig.LOG_EPS))))
    t = torch.arange(sig.SEGMENT_SAMPLES) / sig.SAMPLE_RATE
    low = lm(0.5 * torch.sin(2 * torch.pi * 300.0 * t)[None]).mean(-1)[0]
    high = lm(0.5 * torch.sin(2 * torch.pi * 3000.0 * t)[None]).mean(-1)[0]
    assert int(low.argmax()) < int(high.argmax())
    fb = torch.tensor(sig.mel_filterbank())
    freqs = torch.linspace(0, sig.SAMPLE_RATE / 2, sig.N_BINS)
    assert int(fb[:, int((freqs - 300).abs().argmin())].argmax()) == int(low.argmax())


def test_audio_encoder_shape_and_segment_split():
    torch.manual_seed(0)
    enc = AudioEncoder(24).eval()
    b, t = 2, 3
    wave = torch.rand(b, t * sig.SEGMENT_SAMPLES) * 2 - 1
    out = enc(wave)
    assert out.shape == (b, t, 24)
    assert torch.isfinite(out).all()
    # forward == from_mel(frontend(per-segment waves)): segments are consecutive 8000-sample blocks
    mel = torch.stack([torch.stack([enc.frontend(wave[i:i + 1, s * sig.SEGMENT_SAMPLES:(s + 1) * sig.SEGMENT_SAMPLES])[0]
                                    for s in range(t)]) for i in range(b)])
    torch.testing.assert_close(enc.from_mel(mel), out, rtol=1e-5, atol=1e-5)
    # segments are encoded independently in eval mode
    one = enc(wave[:1, sig.SEGMENT_SAMPLES:2 * sig.SEGMENT_SAMPLES])
    torch.testing.assert_close(one[0, 0], out[0, 1], rtol=1e-5, atol=1e-5)


def test_visual_encoder_shape():
    torch.manual_seed(0)
    enc = VisualEncoder(24).eval()
    b, t = 2, 3
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (b, t, sig.FRAMES_PER_SEGMENT, sig.FRAME_H, sig.FRAME_W, 3),
                           dtype=torch.uint8, generator=g)
    out = enc(frames)
    assert out.shape == (b, t, 24, 4, 6)
    assert torch.isfinite(out).all()
    # per segment independence and the LayerNorm over C
    one = enc(frames[1:, 2:])
    torch.testing.assert_close(one[0, 0], out[1, 2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mean(2), torch.zeros(b, t, 4, 6), rtol=0, atol=1e-5)
    # the second frame of a segment is seen (motion channels)
    moved = frames.clone()
    moved[:, :, 1] = 255 - moved[:, :, 1]
    assert not torch.allclose(enc(moved), out)


def _qenc(vocab=20, dim=16):
    torch.manual_seed(0)
    return QuestionEncoder(vocab, dim).eval()


def test_question_encoder_shape():
    enc = _qenc()
    tokens = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 8, 9, 10, 11, 2]])
    out = enc(tokens)
    assert out.shape == (2, 1 + 6, 16)                 # the question vector, then one row per word
    assert not torch.allclose(out[0, 0], out[1, 0])
    assert torch.all(out[0, 4:] == 0) and torch.all(out[0, 1:4].abs().sum(-1) > 0)   # padding rows are zero
    assert torch.all(out[1, 1:].abs().sum(-1) > 0)
    torch.testing.assert_close(out[0, 0], out[0, 3])   # q is the last real word's state


def test_question_encoder_ignores_right_padding():
    enc = _qenc()
    q = [3, 4, 5, 6]
    outs = [enc(torch.tensor([q + [0] * pad])) for pad in (0, 1, 4, 10)]
    for o in outs[1:]:                                 # q and the real words' rows do not move
        torch.testing.assert_close(o[:, :5], outs[0], rtol=1e-6, atol=1e-6)
        assert torch.all(o[:, 5:] == 0)
    # in a batch of fixed token length, each row equals the row encoded alone without padding
    batch = torch.tensor([[3, 4, 5, 6, 0, 0, 0, 0],
                          [9, 0, 0, 0, 0, 0, 0, 0],
                          [2, 3, 4, 5, 6, 7, 8, 9]])
    out = enc(batch)
    for i, n in enumerate((4, 1, 8)):
        torch.testing.assert_close(out[i, :1 + n], enc(batch[i:i + 1, :n])[0], rtol=1e-6, atol=1e-6)


def test_question_encoder_reads_the_last_real_token():
    """Not a mean over positions nor the final (padded) position: changing the last real token
    changes the output, while a different prefix length is visible too."""
    enc = _qenc()
    a = enc(torch.tensor([[3, 4, 5, 0, 0]]))
    b = enc(torch.tensor([[3, 4, 6, 0, 0]]))
    c = enc(torch.tensor([[3, 4, 0, 0, 0]]))
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)


def test_feature_projections_paper_sizes():
    cfg = preset("paper")
    assert (cfg.dim, cfg.map_h, cfg.map_w, cfg.audio_in, cfg.visual_in) == (512, 14, 14, 128, 512)
    torch.manual_seed(0)
    proj = FeatureProjections(cfg.audio_in, cfg.visual_in, cfg.dim)
    b, t = 2, 2
    a = proj.encode_audio(torch.randn(b, t, cfg.audio_in))
    v = proj.encode_visual(torch.randn(b, t, cfg.visual_in, cfg.map_h, cfg.map_w).half())  # any float dtype in
    assert a.shape == (b, t, cfg.dim)
    assert v.shape == (b, t, cfg.dim, cfg.map_h, cfg.map_w) and v.dtype == torch.float32
    torch.testing.assert_close(v.mean(2), torch.zeros(b, t, cfg.map_h, cfg.map_w), rtol=0, atol=1e-4)
    torch.testing.assert_close(a.mean(-1), torch.zeros(b, t), rtol=0, atol=1e-4)


def test_sinusoidal_embedding():
    e = sinusoidal(torch.tensor([0, 3]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-np.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(e[1], torch.cat([(3 * freqs).sin(), (3 * freqs).cos()]))
