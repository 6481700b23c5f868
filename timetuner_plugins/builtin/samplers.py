"""Built-in plugin: the native samplers."""

from registry import SamplerSpec, hookimpl, one_eval_per_step, two_evals_per_step

from ..sampling import multistep as m
from ..sampling import samplers as s


def _churns(options) -> bool:
    return float(options.get("s_churn", 0.0)) > 0


@hookimpl
def register_samplers(register):
    register(
        SamplerSpec(
            "ddim", s.sample_euler, one_eval_per_step, description="DDIM, eta=0 (Euler on the probability-flow ODE)"
        )
    )
    register(
        SamplerSpec(
            "ddpm",
            s.sample_euler_ancestral,
            one_eval_per_step,
            stochastic=True,
            defaults={"eta": 1.0},
            description="DDPM ancestral sampling (Euler-ancestral, eta=1)",
        )
    )
    register(
        SamplerSpec(
            "heun",
            s.sample_heun,
            two_evals_per_step,
            stochastic=_churns,
            defaults={"s_churn": 0.0},
            description="EDM Heun, 2nd order (churn options)",
        )
    )
    register(
        SamplerSpec(
            "dpm_2",
            s.sample_dpm_2,
            two_evals_per_step,
            stochastic=_churns,
            description="DPM-Solver-2, midpoint in log sigma",
        )
    )
    register(
        SamplerSpec(
            "dpmpp_2m", s.sample_dpmpp_2m, one_eval_per_step, description="DPM-Solver++(2M), 2nd-order multistep"
        )
    )
    register(
        SamplerSpec(
            "res_multistep",
            m.sample_res_multistep,
            one_eval_per_step,
            description="RES 2nd-order multistep, exponential integrator (ComfyUI's res_multistep)",
        )
    )
    register(
        SamplerSpec(
            "ipndm",
            m.sample_ipndm,
            one_eval_per_step,
            description="improved PNDM, 4th-order Adams-Bashforth on dx/dsigma",
        )
    )
    register(
        SamplerSpec(
            "deis",
            m.sample_deis,
            one_eval_per_step,
            description="DEIS-tAB, max order 3, ComfyUI's tabulated coefficients",
        )
    )
    register(
        SamplerSpec(
            "uni_pc",
            m.sample_unipc,
            one_eval_per_step,
            description="UniPC, B(h)=h (bh1), order 3 multistep predictor-corrector, ends at sigma=0.001",
        )
    )
    register(
        SamplerSpec(
            "uni_pc_bh2",
            m.sample_unipc_bh2,
            one_eval_per_step,
            description="UniPC, B(h)=e^h-1 (bh2), order 3 multistep predictor-corrector, ends at sigma=0.001",
        )
    )
