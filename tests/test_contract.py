"""The model contract: every adapter meets it, and a third-party model's own metric, features and data are used
exactly like the bundled models' (no name switches)."""

import pytest
import torch

import registry
from timetuner_plugins.contract import HasQualityMetric, HasRealData, HasTuningFeatures, TunableModel
from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser
from timetuner_plugins.evaluation.evaluate import evaluate
from timetuner_plugins.evaluation.metrics import FrechetMetric
from timetuner_plugins.tuning.pipeline import schedule_sigmas
from timetuner_plugins.tuning.tuner import TuneConfig, TuneError, Tuner


class Eps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * (t[:, None, None, None] / 1000)


def _user_model() -> DiscreteVPDenoiser:
    torch.manual_seed(0)
    model = DiscreteVPDenoiser(Eps(), DiscreteVPDenoiser.linear_betas()).eval().requires_grad_(False)
    model.sample_shape, model.model_id = (1, 4, 4), "user-model"
    return model


class MeanMetric(FrechetMetric):
    """A user's own metric: FD of the pixel moments against zero mean and unit covariance."""

    calls = 0

    def __init__(self):
        super().__init__(self._flat, (torch.zeros(16).numpy(), torch.eye(16).double().numpy()))

    def _flat(self, samples):
        MeanMetric.calls += 1
        return samples.reshape(len(samples), -1).cpu()


@pytest.mark.parametrize("name", ["digits-ddpm", "digits-edm", "digits-flow", "gmm-digits", "gmm-digits-flow"])
def test_bundled_models_meet_the_contract_and_carry_their_own_measures(name):
    model = registry.load_model(name)
    assert isinstance(model, TunableModel)
    assert isinstance(model, HasQualityMetric) and isinstance(model, HasRealData)
    assert isinstance(model, HasTuningFeatures) == (not name.startswith("gmm"))  # a mixture has no classifier


def test_a_user_model_has_no_measures_until_it_provides_them():
    model = _user_model()
    assert isinstance(model, TunableModel)
    assert not isinstance(model, (HasQualityMetric, HasTuningFeatures, HasRealData))
    sigmas, schedule = schedule_sigmas(model, "ddim", None, nfe=3)
    before = evaluate(model, registry.get_sampler("ddim"), sigmas, schedule, n=16)
    assert before["fd"] is None and before["traj_err"] >= 0
    config = TuneConfig(
        iters=2, batch=8, pool=8, val_size=8, validate_every=1, teacher_substeps=2, select_by="fd", show_progress=False
    )
    with pytest.raises(TuneError, match="quality_metric"):
        Tuner(model, "ddim", sigmas, schedule, config)

    model.quality_metric = MeanMetric  # the member is the whole protocol: no registration, no name
    assert isinstance(model, HasQualityMetric)
    after = evaluate(model, registry.get_sampler("ddim"), sigmas, schedule, n=16)
    assert after["fd"] is not None and after["fd"] > 0
    MeanMetric.calls = 0
    result = Tuner(model, "ddim", sigmas, schedule, config).tune()
    assert result.selection["metric"] == "fd" and MeanMetric.calls > 0


def test_a_guidance_wrapper_passes_its_models_measures_on():
    from timetuner_plugins.adapters.denoisers import CFGDenoiser

    inner = _user_model()
    assert not isinstance(CFGDenoiser(inner, 2.0), HasQualityMetric)
    inner.quality_metric = MeanMetric
    guided = CFGDenoiser(inner, 2.0)
    assert isinstance(guided, HasQualityMetric) and isinstance(guided.quality_metric(), MeanMetric)


def test_tuning_leaves_a_trainable_user_network_as_it_was():
    """A network its owner left trainable is tuned exactly like a frozen one: the weights get no gradients (no
    backward work for them, no ``.grad`` left on the user's network) and stay trainable afterwards."""
    sigmas, schedule = schedule_sigmas(_user_model(), "ddim", "quadratic_t", nfe=3)
    config = TuneConfig(iters=3, batch=8, pool=16, teacher_substeps=2, select=False, show_progress=False)
    frozen = Tuner(_user_model(), "ddim", sigmas, schedule, config).tune()
    model = _user_model().requires_grad_(True)
    trainable = Tuner(model, "ddim", sigmas, schedule, config).tune()
    assert torch.equal(trainable.tau, frozen.tau) and not torch.equal(trainable.tau, trainable.eval_sigmas)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
