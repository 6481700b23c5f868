"""Built-in plugin: the samplers of the source papers beyond TimeTuner's own (BDIA, Li et al.'s accelerated
DDIM/DDPM, Pandey et al.'s conjugate integrators)."""

from registry import SamplerSpec, hookimpl, one_eval_per_step, two_evals_per_step

from ..sampling import accelerated, bdia, conjugate


@hookimpl
def register_samplers(register):
    register(
        SamplerSpec(
            "bdia_ddim",
            bdia.sample_bdia_ddim,
            one_eval_per_step,
            defaults={"gamma": bdia.DEFAULT_GAMMA, "frame": "auto"},
            description="BDIA-DDIM (Zhang et al., ECCV 2024): each DDIM step also redoes the previous interval "
            "backward; exactly invertible (timetuner invert); gamma 0 = DDIM",
        )
    )
    register(
        SamplerSpec(
            "bdia_edm",
            bdia.sample_bdia_edm,
            two_evals_per_step,
            defaults={"gamma": bdia.DEFAULT_GAMMA, "backward": "euler", "frame": "ve"},
            description="BDIA applied to EDM's Heun sampler (Zhang et al., ECCV 2024); exactly invertible; "
            "gamma 0 = heun",
        )
    )
    register(
        SamplerSpec(
            "accel_ddim",
            accelerated.sample_accel_ddim,
            one_eval_per_step,
            description="accelerated DDIM (Li et al., ICML 2024): DDIM + a correction from the previous "
            "evaluation, O(1/T^2) in the paper's bound",
        )
    )
    register(
        SamplerSpec(
            "accel_ddpm",
            accelerated.sample_accel_ddpm,
            one_eval_per_step,
            stochastic=True,
            description="accelerated DDPM (Li et al., ICML 2024): half the noise before the evaluation, half "
            "after, O(1/T) in the paper's bound",
        )
    )
    register(
        SamplerSpec(
            "conjugate_ddim",
            conjugate.sample_conjugate_ddim,
            one_eval_per_step,
            defaults={"lam": conjugate.DEFAULT_LAM},
            description="lambda-DDIM, a conjugate integrator (Pandey et al., ICLR 2024): Euler after the map "
            "x -> e^(lam t) x; lam 0 = DDIM",
        )
    )
