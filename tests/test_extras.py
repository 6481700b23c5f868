"""The demo extra (matplotlib, scikit-learn) is optional: tuning and applying a set for one's own model works
without it, and what does need it says how to install it."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    import registry
    import timetuner_plugins.cli  # noqa: F401
    import comfyui_nodes.model_patch  # noqa: F401
    from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser
    from timetuner_plugins.extras import MissingExtraError
    from timetuner_plugins.tuning.pipeline import schedule_sigmas, tune_set
    from timetuner_plugins.tuning.tuner import TuneConfig

    class Eps(torch.nn.Module):  # a user's own ε-network: no digits data, no classifier
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x) * (t[:, None, None, None] / 1000)

    torch.manual_seed(0)
    model = DiscreteVPDenoiser(Eps(), DiscreteVPDenoiser.linear_betas()).eval().requires_grad_(False)
    model.sample_shape = (1, 4, 4)
    sigmas, schedule = schedule_sigmas(model, "ddim", None, nfe=4)
    config = TuneConfig(iters=2, batch=8, pool=8, val_size=8, teacher_substeps=2, validate_every=1,
                        show_progress=False)
    tuned = tune_set(model, "ddim", sigmas, schedule, config, eval_n=8)
    assert tuned.tuned_set.nfe == 4 and "traj_err" in tuned.after
    assert not any(m.split(".")[0] in ("matplotlib", "sklearn") for m in sys.modules)

    for what in ("timetuner_plugins.experiments.plots", "digits"):
        try:
            if what == "digits":
                from timetuner_plugins.bundled.data import digits
                digits("train")
            else:
                __import__(what)
        except MissingExtraError as exc:
            assert "pip install 'timetuner[demo]'" in str(exc), exc
            print("refused:", exc)
        else:
            raise AssertionError(f"{what} imported without its extra")
    print("ok")
    """
)


@pytest.fixture
def without_extra(tmp_path):
    """An environment in which matplotlib and scikit-learn cannot be imported, as without the extra: packages of
    those names that fail to import shadow the installed ones."""
    for name in ("matplotlib", "sklearn"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {name}")\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_own_model_tunes_without_the_demo_extra(without_extra):
    proc = _run(SCRIPT, without_extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "ok"
    assert any("the bundled models' digits data needs scikit-learn" in line for line in lines)
    assert any("the figures (demo, bench, plots) needs matplotlib" in line for line in lines)


def test_cli_names_the_extra_when_the_digits_data_is_missing(without_extra):
    code = (
        "import sys\n"
        "from timetuner_plugins.cli import main\n"
        "sys.argv = ['timetuner', 'eval', '--model', 'digits-ddpm', '--sampler', 'ddim', '--steps', '4', '--n', '8']\n"
        "main()\n"
    )
    proc = _run(code, without_extra)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-2000:])
    assert "needs scikit-learn" in proc.stderr and "pip install 'timetuner[demo]'" in proc.stderr
    assert "Traceback" not in proc.stderr
