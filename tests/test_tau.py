"""τ reaches the network, only the network's conditioning moves, lookups by index and by σ."""

from __future__ import annotations

import pytest
import torch

import registry
from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser, EDMDenoiser
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, sample
from timetuner_plugins.sets.tau import TauLookup, TauLookupError

from helpers import noise


class RecordingNet(torch.nn.Module):
    """Returns a fixed function of its input and records the noise label it is conditioned on."""

    def __init__(self):
        super().__init__()
        self.labels = []
        self.inputs = []

    def forward(self, x, noise_label, label=None):
        self.labels.append(noise_label.detach().clone())
        self.inputs.append(x.detach().clone())
        return torch.tanh(x) * 0.5


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_2", "dpmpp_2m", "ddpm"])
def test_tau_reaches_the_network_and_preconditioning_stays(name):
    net = RecordingNet()
    model = DiscreteVPDenoiser(net, DiscreteVPDenoiser.linear_betas())
    model.sample_shape = (1, 8, 8)
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(model, "quadratic_t", 4)
    ev = eval_sigmas(spec, sigmas, model.sample_shape)
    tau = ev * torch.linspace(0.8, 1.2, len(ev))
    with torch.no_grad():
        sample(model, spec, sigmas, noise(3), lookup=TauLookup(ev, tau), seed=0)
    labels = torch.stack([lab[0] for lab in net.labels])
    assert len(labels) == len(ev)
    torch.testing.assert_close(labels, model.sigma_to_t(tau), rtol=1e-5, atol=1e-4)
    # the input scaling c_in used σ, not τ: recompute the plain run's inputs and compare
    plain = RecordingNet()
    plain_model = DiscreteVPDenoiser(plain, DiscreteVPDenoiser.linear_betas())
    with torch.no_grad():
        x = noise(3) * sigmas[0]
        plain_model(x, sigmas[0].expand(3))
        model(x, sigmas[0].expand(3), cond_sigma=tau[0].expand(3))
    torch.testing.assert_close(plain.inputs[0], net.inputs[-1])


def test_edm_conditioning_is_log_tau_over_four():
    net = RecordingNet()
    model = EDMDenoiser(net, 0.5)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        model(x, torch.tensor([1.0, 1.0]), cond_sigma=torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(net.labels[0], torch.log(torch.tensor([2.0, 2.0])) / 4)


def test_more_evaluations_than_the_lookup_is_an_error(gmm):
    spec = registry.get_sampler("ddim")
    sigmas = make_sigmas(gmm, "logsnr", 5)
    short = TauLookup.identity(torch.ones(3))
    with pytest.raises(TauLookupError, match="more than 3 network evaluations"):
        with torch.no_grad():
            sample(gmm, spec, sigmas, noise(2), lookup=short)
    longer = TauLookup.identity(torch.ones(7))
    with pytest.raises(TauLookupError, match="made 5 network evaluations but this τ set has 7"):
        with torch.no_grad():
            sample(gmm, spec, sigmas, noise(2), lookup=longer)


def test_sigma_keyed_lookup():
    ev = torch.tensor([10.0, 5.0, 5.0, 1.0])
    lookup = TauLookup(ev, ev * torch.tensor([1.1, 0.9, 0.8, 1.0]))
    assert lookup.index_of(5.0002) == 1 and lookup.index_of(5.0, start=2) == 2 and lookup.index_of(7.0) is None
    assert TauLookup.identity(ev).is_identity() and not lookup.is_identity()
