"""Adapter arithmetic: ε, v and EDM preconditioning, CFG, the time axis."""

from __future__ import annotations

import torch

from timetuner_plugins.adapters.denoisers import CFGDenoiser, DiscreteVPDenoiser, EDMDenoiser


class Linear(torch.nn.Module):
    def forward(self, x, noise_label, label=None):
        out = 0.3 * x + 0.01 * noise_label.reshape(-1, *([1] * (x.ndim - 1)))
        if label is not None:
            out = out + label.reshape(-1, *([1] * (x.ndim - 1))).float()
        return out


def test_time_axis_round_trips_and_interpolates():
    m = DiscreteVPDenoiser(Linear(), DiscreteVPDenoiser.linear_betas())
    t = torch.tensor([0.0, 0.5, 10.0, 499.25, 999.0], dtype=torch.float64)
    torch.testing.assert_close(m.sigma_to_t(m.t_to_sigma(t)), t, rtol=0, atol=1e-6)
    assert abs(m.sigma_min - 0.0100005) < 1e-6 and 157 < m.sigma_max < 158
    assert m.t_range == (0.0, 999.0)


def test_eps_and_v_parameterisations_match_their_definitions():
    abar = DiscreteVPDenoiser.linear_betas()
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = 300
    a = abar[t]
    sigma = ((1 - a) / a).sqrt()
    x_vp = a.sqrt() * x0 + (1 - a).sqrt() * eps

    class Oracle(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, x, noise_label, label=None):
            assert torch.allclose(x, x_vp)  # c_in maps the σ-space input back to the VP sample
            return eps if self.kind == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    for kind in ("eps", "v"):
        m = DiscreteVPDenoiser(Oracle(kind), abar, prediction=kind).double()
        torch.testing.assert_close(m(x_vp / a.sqrt(), sigma.expand(4)), x0)


def test_edm_preconditioning_is_exact_for_an_oracle():
    sd = 0.5
    x0 = torch.randn(3, 1, 8, 8)
    sigma = torch.tensor([0.7, 0.7, 0.7])
    x = x0 + torch.randn_like(x0) * 0.7
    c_skip, c_out = sd**2 / (0.49 + sd**2), 0.7 * sd / (0.49 + sd**2) ** 0.5

    class Oracle(torch.nn.Module):
        def forward(self, x_in, c_noise, label=None):
            return (x0 - c_skip * x) / c_out

    torch.testing.assert_close(EDMDenoiser(Oracle(), sd)(x, sigma), x0, rtol=1e-5, atol=1e-5)


def test_cfg_guides_and_both_branches_see_tau():
    seen = []

    class Spy(DiscreteVPDenoiser):
        def denoise(self, x, sigma, cond_sigma, **extra):
            seen.append(cond_sigma.clone())
            return super().denoise(x, sigma, cond_sigma, **extra)

    inner = Spy(Linear(), DiscreteVPDenoiser.linear_betas())
    cfg = CFGDenoiser(inner, scale=3.0)
    x = torch.randn(2, 1, 8, 8)
    sigma, tau = torch.tensor([2.0, 2.0]), torch.tensor([2.5, 2.5])
    out = cfg(x, sigma, cond_sigma=tau, cond=torch.tensor([1, 1]), uncond=torch.tensor([10, 10]))
    torch.testing.assert_close(seen[0], torch.cat([tau, tau]))
    d_c = inner(x, sigma, cond_sigma=tau, label=torch.tensor([1, 1]))
    d_u = inner(x, sigma, cond_sigma=tau, label=torch.tensor([10, 10]))
    torch.testing.assert_close(out, d_u + 3.0 * (d_c - d_u))
    assert cfg.fingerprint == inner.fingerprint
