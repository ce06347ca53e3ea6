"""RMM slot memory (paper Eq. 1-4): addressing maths against hand computation, the
properties of the two addressing variants, the recall loss and the entropy helper."""
import math

import numpy as np
import pytest
import torch

from avqa_edge.toolkit.model.rmm import SlotMemory, entropy, recall_loss


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors on a shared CPU: one thread is faster and steadier than several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---- a hand-sized memory: C = 2, H'W' = 1x1, L = 3 ------------------------------------------
SLOTS_V = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])      # G^v (L, H'W'C) = (3, 2)
SLOTS_A = np.array([[0.5, -1.0], [2.0, 1.0], [0.0, 3.0]])      # G^a (L, C)
SLOTS_T = np.array([[1.0, 1.0], [-2.0, 0.5], [0.0, -1.0]])     # G^t (L, C)
TAU = np.array([0.5, 2.0, 1.5])                                # (visual, audio, text)

V = np.array([[[1.0, 2.0], [-0.5, 0.3]]])                     # (B=1, T=2, C=2); map 1x1 added below
A = np.array([[[0.2, -1.0], [1.5, 0.5]]])                     # (B=1, T=2, C=2)
Q = np.array([[0.7, -0.4]])                                   # (B=1, C=2)


def _memory(addressing: str) -> SlotMemory:
    m = SlotMemory(dim=2, map_hw=(1, 1), n_slots=3, addressing=addressing)
    with torch.no_grad():
        m.slots_v.copy_(torch.tensor(SLOTS_V))
        m.slots_a.copy_(torch.tensor(SLOTS_A))
        m.slots_t.copy_(torch.tensor(SLOTS_T))
        m.log_tau.copy_(torch.tensor(np.log(TAU)))
    return m


def _softmax(x):
    e = [math.exp(v - max(x)) for v in x]
    s = sum(e)
    return [v / s for v in e]


def _expected_weights(x, slots, tau_m, q, variant):
    """Eq. 1 written out for one segment: dot products / temperature, softmax, combine."""
    l_m = [sum(xi * gi for xi, gi in zip(x, g)) / tau_m for g in slots]         # (x . G^m_j) / tau_m
    l_t = [sum(qi * gi for qi, gi in zip(q, g)) / TAU[2] for g in SLOTS_T]       # (q . G^t_j) / tau_t
    a_m, a_t = _softmax(l_m), _softmax(l_t)
    if variant == "paper":                       # softmax(a^m * a^t)
        return _softmax([pm * pt for pm, pt in zip(a_m, a_t)])
    # logspace: softmax(log a^m + log a^t) = a^m a^t / sum_j a^m_j a^t_j
    return _softmax([math.log(pm) + math.log(pt) for pm, pt in zip(a_m, a_t)])


def _weighted_sum(w, slots):
    """Eq. 2: sum_j w_j G_j."""
    return [sum(w[j] * slots[j][k] for j in range(len(w))) for k in range(len(slots[0]))]


@pytest.mark.parametrize("variant", ["paper", "logspace"])
def test_audio_recall_matches_hand_computation(variant):
    m = _memory(variant)
    v = torch.tensor(V, dtype=torch.float32)[..., None, None]     # (1, 2, 2, 1, 1)
    q = torch.tensor(Q, dtype=torch.float32)
    w = m.address_from_visual(v, q)
    pa = m.pseudo_audio(v, q)
    assert w.shape == (1, 2, 3) and pa.shape == (1, 2, 2)
    for t in range(2):
        ew = _expected_weights(V[0, t], SLOTS_V, TAU[0], Q[0], variant)
        ep = _weighted_sum(ew, SLOTS_A)
        np.testing.assert_allclose(w[0, t].detach().numpy(), ew, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pa[0, t].detach().numpy(), ep, rtol=1e-5, atol=1e-6)


EXTRA_KEYS_V = np.array([[0.5, 1.0], [1.0, -1.0], [-0.5, 0.0]])   # head 1's visual keys (L=3, H'W'C=2)


@pytest.mark.parametrize("variant", ["paper", "logspace"])
def test_two_head_audio_recall_matches_hand_computation(variant):
    """Head 0 addresses with G^v, head 1 with its own keys (Eq. 1 each, same question term);
    head h reads channel h of G^a (Eq. 2 per head: C = 2 split into 2 groups of 1)."""
    m = SlotMemory(dim=2, map_hw=(1, 1), n_slots=3, addressing=variant, audio_heads=2)
    with torch.no_grad():
        m.slots_v.copy_(torch.tensor(SLOTS_V))
        m.extra_keys_v.copy_(torch.tensor(EXTRA_KEYS_V)[None])
        m.slots_a.copy_(torch.tensor(SLOTS_A))
        m.slots_t.copy_(torch.tensor(SLOTS_T))
        m.log_tau.copy_(torch.tensor(np.log(TAU)))
    v = torch.tensor(V, dtype=torch.float32)[..., None, None]
    q = torch.tensor(Q, dtype=torch.float32)
    w = m.address_from_visual(v, q)
    pa = m.pseudo_audio(v, q)
    assert w.shape == (1, 2, 2, 3) and pa.shape == (1, 2, 2)
    for t in range(2):
        for h, keys in enumerate((SLOTS_V, EXTRA_KEYS_V)):
            ew = _expected_weights(V[0, t], keys, TAU[0], Q[0], variant)
            np.testing.assert_allclose(w[0, t, h].detach().numpy(), ew, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(float(pa[0, t, h].detach()), _weighted_sum(ew, SLOTS_A)[h], rtol=1e-5, atol=1e-6)


def test_heads_recall_a_combination_one_head_cannot():
    """Two heads can read slot 0's first half and slot 1's second half: a recall that no
    convex blend of the slots (one head) gives."""
    m = SlotMemory(dim=2, map_hw=(1, 1), n_slots=2, audio_heads=2)
    with torch.no_grad():
        m.slots_v.copy_(torch.tensor([[50.0, 0.0], [-50.0, 0.0]]))       # head 0 picks slot 0
        m.extra_keys_v.copy_(torch.tensor([[[-50.0, 0.0], [50.0, 0.0]]]))  # head 1 picks slot 1
        m.slots_a.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        m.slots_t.zero_()
    pa = m.pseudo_audio(torch.tensor([[[1.0, 0.0]]])[..., None, None], torch.zeros(1, 2))
    torch.testing.assert_close(pa[0, 0], torch.tensor([1.0, 1.0]), rtol=0, atol=1e-4)
    # one head: the recall is a convex blend of (1, 0) and (0, 1), so its entries sum to 1
    one = SlotMemory(dim=2, map_hw=(1, 1), n_slots=2)
    with torch.no_grad():
        one.slots_a.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    out = one.pseudo_audio(torch.randn(5, 3, 2, 1, 1), torch.randn(5, 2))
    torch.testing.assert_close(out.sum(-1), torch.ones(5, 3))


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="divide"):
        SlotMemory(dim=6, map_hw=(1, 1), n_slots=3, audio_heads=4)


@pytest.mark.parametrize("variant", ["paper", "logspace"])
def test_visual_recall_matches_hand_computation(variant):
    m = _memory(variant)
    a = torch.tensor(A, dtype=torch.float32)
    q = torch.tensor(Q, dtype=torch.float32)
    w = m.address_from_audio(a, q).detach()
    pv = m.pseudo_visual(a, q)
    assert w.shape == (1, 2, 3) and pv.shape == (1, 2, 2, 1, 1)
    for t in range(2):
        ew = _expected_weights(A[0, t], SLOTS_A, TAU[1], Q[0], variant)
        ep = _weighted_sum(ew, SLOTS_V)
        np.testing.assert_allclose(w[0, t].detach().numpy(), ew, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pv[0, t, :, 0, 0].detach().numpy(), ep, rtol=1e-5, atol=1e-6)


def test_hand_example_variants_differ():
    """The two variants give different weights on the same inputs (guards the dispatch)."""
    a = torch.tensor(A, dtype=torch.float32)
    q = torch.tensor(Q, dtype=torch.float32)
    wp = _memory("paper").address_from_audio(a, q)
    wl = _memory("logspace").address_from_audio(a, q)
    assert (wp - wl).abs().max() > 1e-2


def test_visual_map_layout_is_channel_major():
    """G^v rows are flattened (C, H', W'): pseudo_visual reshapes them back the same way that
    address_from_visual flattens its input."""
    torch.manual_seed(0)
    m = SlotMemory(dim=3, map_hw=(2, 2), n_slots=4)
    with torch.no_grad():
        m.slots_v.copy_(torch.arange(4 * 12, dtype=torch.float32).reshape(4, 12))
    # a one-hot-ish address (very peaked audio logits) reads slot 2 exactly
    with torch.no_grad():
        m.slots_a.copy_(torch.eye(4, 3) * 100)
        m.slots_t.zero_()
    a = torch.tensor([[[0.0, 0.0, 1.0]]])                     # aligned with slot 2 only
    pv = m.pseudo_visual(a, torch.zeros(1, 3))
    torch.testing.assert_close(pv[0, 0], m.slots_v[2].reshape(3, 2, 2), rtol=0, atol=1e-4)


def test_temperature_initialisation():
    m = SlotMemory(dim=8, map_hw=(2, 3), n_slots=5, learn_temperature=True)
    np.testing.assert_allclose(m.log_tau.exp().detach().numpy(),
                               [math.sqrt(8 * 6), math.sqrt(8), math.sqrt(8)], rtol=1e-6)
    assert m.log_tau.requires_grad
    p = SlotMemory(dim=8, map_hw=(2, 3), n_slots=5, learn_temperature=False)
    np.testing.assert_allclose(p.log_tau.exp().detach().numpy(), [math.sqrt(8)] * 3, rtol=1e-6)
    assert not p.log_tau.requires_grad
    assert m.slots_v.shape == (5, 48) and m.slots_a.shape == (5, 8) and m.slots_t.shape == (5, 8)


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 1000.0])
def test_paper_variant_max_min_ratio_at_most_e(scale):
    """softmax of a product of two probability vectors (in [0, 1]): weights differ by at most e."""
    g = torch.Generator().manual_seed(int(scale * 10))
    m = SlotMemory(dim=4, map_hw=(2, 2), n_slots=12, addressing="paper", audio_heads=2)
    with torch.no_grad():
        for p in (m.slots_v, m.extra_keys_v, m.slots_a, m.slots_t):
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    v = torch.randn(3, 5, 4, 2, 2, generator=g) * scale
    a = torch.randn(3, 5, 4, generator=g) * scale
    q = torch.randn(3, 4, generator=g) * scale
    for w in (m.address_from_visual(v, q), m.address_from_audio(a, q)):
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        ratio = (w.max(-1).values / w.min(-1).values).detach()
        assert float(ratio.max()) <= math.e * (1 + 1e-5)


def test_paper_variant_ratio_bound_is_tight():
    """The bound is reached when one slot wins both addressings outright."""
    m = SlotMemory(dim=2, map_hw=(1, 1), n_slots=3, addressing="paper")
    with torch.no_grad():
        m.slots_a.copy_(torch.tensor([[100.0, 0.0], [0.0, 0.0], [-100.0, 0.0]]))
        m.slots_t.copy_(torch.tensor([[100.0, 0.0], [0.0, 0.0], [-100.0, 0.0]]))
    w = m.address_from_audio(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[1.0, 0.0]]))
    # product vector ~ (1, 0, 0): weights (e, 1, 1) / (e + 2)
    torch.testing.assert_close(w[0, 0], torch.tensor([math.e, 1.0, 1.0]) / (math.e + 2), rtol=1e-4, atol=1e-5)


def test_logspace_with_peaked_logits_selects_a_slot():
    torch.manual_seed(0)
    m = SlotMemory(dim=4, map_hw=(1, 1), n_slots=6, addressing="logspace")
    with torch.no_grad():
        m.slots_a.copy_(torch.nn.functional.normalize(torch.randn(6, 4), dim=1))   # unit rows
        m.slots_v.copy_(torch.randn(6, 4))
        m.slots_t.copy_(torch.randn(6, 4))
    target = 3
    a = (m.slots_a[target].detach() * 50.0)[None, None]            # (1, 1, 4) aligned with slot 3
    q = torch.zeros(1, 4)                                           # uninformative question
    w = m.address_from_audio(a, q).detach()
    assert int(w.argmax(-1)) == target
    assert float(w.max()) > 0.9
    pv = m.pseudo_visual(a, q)
    torch.testing.assert_close(pv[0, 0, :, 0, 0], m.slots_v[target].detach(), rtol=0, atol=0.2)
    # the paper variant on the same input stays near-uniform (no slot gets > e/(e + L - 1))
    m.addressing = "paper"
    wp = m.address_from_audio(a, q).detach()
    assert float(wp.max()) <= math.e / (math.e + 5) + 1e-5


def test_logspace_equals_normalised_product():
    torch.manual_seed(1)
    m = SlotMemory(dim=4, map_hw=(1, 1), n_slots=7, addressing="logspace")
    lm, lt = torch.randn(2, 3, 7) * 5, torch.randn(2, 3, 7) * 5
    prod = torch.softmax(lm, -1) * torch.softmax(lt, -1)
    torch.testing.assert_close(m._combine(lm, lt), prod / prod.sum(-1, keepdim=True))


def test_gradients_reach_slots_and_temperatures():
    torch.manual_seed(2)
    m = SlotMemory(dim=4, map_hw=(2, 2), n_slots=5)
    a, v, q = torch.randn(2, 3, 4), torch.randn(2, 3, 4, 2, 2), torch.randn(2, 4)
    loss = recall_loss(a, m.pseudo_audio(v, q)) + recall_loss(v, m.pseudo_visual(a, q))
    loss.backward()
    for p in (m.slots_v, m.slots_a, m.slots_t, m.log_tau):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# ---- recall loss (Eq. 3-4) -------------------------------------------------------------------
def test_recall_loss_reductions_exact():
    real = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],
                         [[0.0, 1.0], [1.0, 1.0]]])                 # (2, 2, 2)
    pseudo = torch.tensor([[[0.0, 0.0], [1.0, 0.0]],
                           [[0.0, 0.0], [0.0, 0.0]]])
    # squared diffs: sample 0 -> 1, 4, 4, 16 (sum 25); sample 1 -> 0, 1, 1, 1 (sum 3)
    assert float(recall_loss(real, pseudo, "element_mean")) == pytest.approx(28 / 8)
    assert float(recall_loss(real, pseudo)) == pytest.approx(28 / 8)              # default
    assert float(recall_loss(real, pseudo, "sample_sum")) == pytest.approx((25 + 3) / 2)


def test_recall_loss_sample_sum_scales_with_map_size():
    """sample_sum weighs a (C, H', W') map H'W' times more than a C vector of the same error."""
    a_err = recall_loss(torch.ones(3, 4, 8), torch.zeros(3, 4, 8), "sample_sum")
    v_err = recall_loss(torch.ones(3, 4, 8, 2, 3), torch.zeros(3, 4, 8, 2, 3), "sample_sum")
    assert float(v_err) == pytest.approx(6 * float(a_err))
    assert float(recall_loss(torch.ones(3, 4, 8, 2, 3), torch.zeros(3, 4, 8, 2, 3))) == pytest.approx(1.0)


# ---- entropy helper --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 75])
def test_entropy_uniform_is_log_l(n):
    p = torch.full((4, 5, n), 1.0 / n)
    assert float(entropy(p)) == pytest.approx(math.log(n), abs=1e-6)


def test_entropy_one_hot_is_zero_and_mean_over_rows():
    one_hot = torch.eye(4)
    assert float(entropy(one_hot)) == pytest.approx(0.0, abs=1e-6)
    mixed = torch.stack([torch.full((4,), 0.25), torch.eye(4)[0]])
    assert float(entropy(mixed)) == pytest.approx(math.log(4) / 2, abs=1e-6)


def test_stats_uniform_when_slots_are_zero():
    m = SlotMemory(dim=4, map_hw=(2, 2), n_slots=9)
    with torch.no_grad():
        for p in (m.slots_v, m.slots_a, m.slots_t):
            p.zero_()
    torch.manual_seed(3)
    s = m.stats(torch.randn(2, 3, 4), torch.randn(2, 3, 4, 2, 2), torch.randn(2, 4))
    assert s["entropy_uniform"] == pytest.approx(math.log(9))
    assert s["entropy_audio_recall"] == pytest.approx(math.log(9), abs=1e-5)
    assert s["entropy_visual_recall"] == pytest.approx(math.log(9), abs=1e-5)
