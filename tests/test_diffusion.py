"""AVR diffusion maths (paper Eq. 5-7): the angular noise schedule, q(x_t | x_0) and the
deterministic DDIM reverse process with known-part replacement."""
import math

import pytest
import torch

from avqa_edge.toolkit.model.diffusion import NoiseSchedule, reverse

SCHEDULES = [(10, 0.25), (1, 0.5), (4, 0.01), (25, 0.9)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors on a shared CPU: one thread is faster and steadier than several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- schedule --------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,end", SCHEDULES)
def test_schedule_endpoints_and_monotone(steps, end):
    s = NoiseSchedule(steps, end)
    ab = s.alpha_bar
    assert ab.shape == (steps + 1,) and s.betas.shape == (steps,)
    assert ab.dtype == torch.float32
    assert float(ab[0]) == 1.0
    assert float(ab[steps]) == pytest.approx(end, rel=1e-6, abs=1e-7)
    assert bool((ab[1:] < ab[:-1]).all()), "alpha_bar must be strictly decreasing"
    assert bool(((s.betas > 0) & (s.betas < 1)).all())


@pytest.mark.parametrize("steps,end", SCHEDULES)
def test_schedule_is_angular(steps, end):
    s = NoiseSchedule(steps, end)
    phi_max = math.acos(math.sqrt(end))
    expected = torch.tensor([math.cos(t / steps * phi_max) ** 2 for t in range(steps + 1)])
    torch.testing.assert_close(s.alpha_bar, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("steps,end", SCHEDULES)
def test_forward_chain_composes_to_marginal(steps, end):
    """Eq. 5: prod_{i<=t} (1 - beta_i) = alpha_bar_t, i.e. the one-step chain composes to q(x_t | x_0)."""
    s = NoiseSchedule(steps, end)
    torch.testing.assert_close(torch.cumprod(1 - s.betas.double(), 0).float(), s.alpha_bar[1:], rtol=1e-5, atol=1e-7)


def test_schedule_buffers_follow_module_but_are_not_saved():
    s = NoiseSchedule(5, 0.3)
    assert s.state_dict() == {}
    s64 = s.double()
    assert s64.alpha_bar.dtype == torch.float64


# ---- q(x_t | x_0) --------------------------------------------------------------------------------
def test_add_noise_closed_form_per_sample_step():
    s = NoiseSchedule(10, 0.25)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0, 3, 7, 10])
    out = s.add_noise(x0, eps, t)
    for i in range(4):
        ab = s.alpha_bar[t[i]]
        torch.testing.assert_close(out[i], ab.sqrt() * x0[i] + (1 - ab).sqrt() * eps[i])
    torch.testing.assert_close(out[0], x0[0])                              # t = 0: no noise
    torch.testing.assert_close(out[3], 0.5 * x0[3] + math.sqrt(0.75) * eps[3])   # ab_S = 0.25


@pytest.mark.parametrize("t", [1, 5, 10])
def test_add_noise_moments(t):
    s = NoiseSchedule(10, 0.25)
    g = torch.Generator().manual_seed(t)
    n = 200_000
    x0 = torch.tensor([1.5, -2.0, 0.0])
    xt = s.add_noise(x0.expand(n, 3), torch.randn(n, 3, generator=g), torch.full((n,), t))
    ab = float(s.alpha_bar[t])
    torch.testing.assert_close(xt.mean(0), math.sqrt(ab) * x0, rtol=0, atol=0.01)
    torch.testing.assert_close(xt.var(0), torch.full((3,), 1 - ab), rtol=0.02, atol=0.005)


# ---- the reverse process -------------------------------------------------------------------------
def _pair(seed, n=3, c2=6, h=2, w=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c2, h, w, generator=g), torch.randn(n, c2, h, w, generator=g),
            torch.randn(n, c2, h, w, generator=g))


def _oracle(schedule, x0):
    """The true noise of x given x0 at a (possibly fractional) step t of the angular schedule:
    eps = (x - sqrt(ab_t) x0) / sqrt(1 - ab_t), ab_t = cos^2(t / S * phi_max)."""
    phi_max = math.acos(math.sqrt(float(schedule.alpha_bar[-1])))
    def denoiser(x, t):
        ab = torch.cos(t.double() / schedule.steps * phi_max).float().reshape(-1, 1, 1, 1) ** 2
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return denoiser


@pytest.mark.parametrize("steps,end", SCHEDULES)
def test_reverse_grid_without_a_start_is_the_training_steps(steps, end):
    s = NoiseSchedule(steps, end)
    assert torch.equal(s.rev_t, torch.arange(steps + 1, dtype=torch.float32))
    assert torch.equal(s.rev_alpha_bar, s.alpha_bar)


@pytest.mark.parametrize("steps,end,start", [(10, 0.25, 0.75), (4, 0.01, 0.5), (10, 0.25, 0.25)])
def test_reverse_grid_starts_at_alpha_bar_start_in_equal_steps(steps, end, start):
    """t_0 = S phi_start / phi_max, then S equal steps in t; alpha_bar on the grid is the angular
    schedule's at those t (10 steps from 0.75 on the default schedule: t = 5, 4.5, ..., 0.5)."""
    s = NoiseSchedule(steps, end, start)
    t0 = steps * math.acos(math.sqrt(start)) / math.acos(math.sqrt(end))
    torch.testing.assert_close(s.rev_t, torch.linspace(0, t0, steps + 1), rtol=1e-6, atol=1e-6)
    assert float(s.rev_alpha_bar[steps]) == pytest.approx(start, rel=1e-6)
    assert float(s.rev_alpha_bar[0]) == 1.0
    if (steps, end, start) == (10, 0.25, 0.75):
        torch.testing.assert_close(s.rev_t, torch.arange(11) * 0.5)


def test_reverse_start_outside_the_schedule_is_refused():
    with pytest.raises(ValueError, match="alpha_bar_start"):
        NoiseSchedule(10, 0.25, 0.2)
    with pytest.raises(ValueError, match="alpha_bar_start"):
        NoiseSchedule(10, 0.25, 1.0)


@pytest.mark.parametrize("steps,end,start", [(st, en, None) for st, en in SCHEDULES] + [(10, 0.25, 0.75), (4, 0.01, 0.6)])
def test_reverse_with_oracle_denoiser_returns_x0(steps, end, start):
    s = NoiseSchedule(steps, end, start)
    x0, x_start, noise = _pair(steps)
    known = torch.zeros(3, 6, 1, 1)
    out = reverse(_oracle(s, x0), s, x_start, known, noise)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
    # starting from x0 itself noised with the same fixed eps: also x0
    out2 = reverse(_oracle(s, x0), s, x0, known, noise)
    torch.testing.assert_close(out2, x0, rtol=1e-4, atol=1e-4)


def test_reverse_with_oracle_and_known_part():
    """Known channels come from x_start, the generated ones are the oracle's x0."""
    s = NoiseSchedule(10, 0.25)
    x0, x_start, noise = _pair(7)
    known = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]).reshape(1, 6, 1, 1).repeat(3, 1, 1, 1)
    known[1] = 1 - known[1]                                  # per-sample known pattern
    out = reverse(_oracle(s, x0), s, x_start, known, noise)
    torch.testing.assert_close(out, known * x_start + (1 - known) * x0, rtol=1e-4, atol=1e-4)


def _linear_denoiser(seed, c2=6):
    g = torch.Generator().manual_seed(seed)
    wt = torch.randn(c2, c2, generator=g)
    return lambda x, t: torch.einsum("oc,nchw->nohw", wt, x) * t[:, None, None, None].float()


@pytest.mark.parametrize("name", ["zero", "linear", "huge", "constant"])
def test_reverse_keeps_known_channels_for_any_denoiser(name):
    s = NoiseSchedule(10, 0.25)
    x0, x_start, noise = _pair(11)
    denoisers = {"zero": lambda x, t: torch.zeros_like(x),
                 "linear": _linear_denoiser(1),
                 "huge": lambda x, t: 1e6 * torch.ones_like(x),
                 "constant": lambda x, t: torch.full_like(x, -3.0)}
    known = (torch.rand(3, 6, 1, 1, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    known[0] = 1.0                                            # one sample fully known
    assert 0 < known.sum() < known.numel()
    out = reverse(denoisers[name], s, x_start, known, noise)
    kb = known.expand_as(x_start).bool()
    assert torch.equal(out[kb], x_start[kb])
    assert torch.isfinite(out).all()
    # unknown channels are generated, not copied from the start feature
    assert not torch.allclose(out[~kb], x_start[~kb])


def test_reverse_is_deterministic():
    s = NoiseSchedule(10, 0.25)
    _, x_start, noise = _pair(5)
    known = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]).reshape(1, 6, 1, 1).expand(3, -1, -1, -1)
    den = _linear_denoiser(3)
    a = reverse(den, s, x_start, known, noise)
    b = reverse(den, s, x_start.clone(), known.clone(), noise.clone())
    assert torch.equal(a, b)
    # and the explicit noise matters (the determinism is not a constant output)
    c = reverse(den, s, x_start, known, noise + 1.0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_reverse_calls_denoiser_once_per_step_descending(steps):
    s = NoiseSchedule(steps, 0.25)
    _, x_start, noise = _pair(9)
    calls = []

    def den(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        assert bool((t == t[0]).all())
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    reverse(den, s, x_start, torch.zeros(3, 6, 1, 1), noise)
    assert calls == list(range(steps, 0, -1))
    calls.clear()
    reverse(den, NoiseSchedule(steps, 0.25, 0.75), x_start, torch.zeros(3, 6, 1, 1), noise)
    assert calls == pytest.approx([k / 2 for k in range(steps, 0, -1)])    # t_0 = S/2 from 0.75 on this schedule


def test_reverse_first_input_is_x_start_noised_to_step_s():
    s = NoiseSchedule(10, 0.25)
    _, x_start, noise = _pair(13)
    seen = []

    def den(x, t):
        seen.append(x.clone())
        return torch.zeros_like(x)

    reverse(den, s, x_start, torch.zeros(3, 6, 1, 1), noise)
    torch.testing.assert_close(seen[0], s.add_noise(x_start, noise, torch.full((3,), 10)))


def test_reverse_zero_noise_prediction_ddim_step():
    """With eps_theta = 0 the x0 prediction is x_t / sqrt(ab_t) and the DDIM step maps x_t to
    sqrt(ab_{t-1}) times it, so the prediction stays x_S / sqrt(ab_S) through all steps."""
    s = NoiseSchedule(10, 0.25)
    _, x_start, noise = _pair(17)
    out = reverse(lambda x, t: torch.zeros_like(x), s, x_start, torch.zeros(3, 6, 1, 1), noise)
    x_s = s.add_noise(x_start, noise, torch.full((3,), 10))
    torch.testing.assert_close(out, x_s / s.alpha_bar[10].sqrt(), rtol=1e-5, atol=1e-5)


def test_reverse_follows_the_ddim_recursion():
    """Each denoiser input is the DDIM (eta = 0) update of the previous one:
    x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), known parts replaced by x_start,
    x_{t-1} = sqrt(ab_{t-1}) x0_hat + sqrt(1 - ab_{t-1}) eps; the output is the last x0_hat."""
    s = NoiseSchedule(6, 0.2)
    ab = s.alpha_bar.double()
    _, x_start, noise = _pair(21)
    known = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0]).reshape(1, 6, 1, 1).expand(3, -1, -1, -1)
    lin = _linear_denoiser(4)
    inputs, outputs = [], []

    def den(x, t):
        e = 0.1 * lin(x, t)
        inputs.append((int(t[0]), x.double()))
        outputs.append(e.double())
        return e

    out = reverse(den, s, x_start, known, noise)
    assert len(inputs) == 6
    xs, k = x_start.double(), known.double()
    x0_hat = None
    for i, ((t, x_t), eps) in enumerate(zip(inputs, outputs)):
        x0_hat = (x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        x0_hat = k * xs + (1 - k) * x0_hat
        if i + 1 < len(inputs):
            expected_next = ab[t - 1].sqrt() * x0_hat + (1 - ab[t - 1]).sqrt() * eps
            torch.testing.assert_close(inputs[i + 1][1], expected_next, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double(), x0_hat, rtol=1e-4, atol=1e-4)
