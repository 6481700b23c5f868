"""Built-in plugin: the σ schedules."""

from registry import ScheduleSpec, hookimpl

from ..sampling import schedules


@hookimpl
def register_schedules(register):
    register(ScheduleSpec("uniform_t", schedules.uniform_t, "evenly spaced in the model's time"))
    register(ScheduleSpec("quadratic_t", schedules.quadratic_t, "quadratic in the model's time (DDIM's)"))
    register(ScheduleSpec("logsnr", schedules.logsnr_uniform, "evenly spaced in log-SNR"))
    register(ScheduleSpec("karras", schedules.karras, "Karras et al. 2022, rho=7 (ComfyUI's karras)"))
    register(ScheduleSpec("exponential", schedules.logsnr_uniform, "ComfyUI's name for logsnr: log-uniform σ"))
    # ComfyUI's other schedulers by its names, on the model's σ table: a set tuned on them matches ComfyUI's σ's
    register(ScheduleSpec("simple", schedules.simple, "ComfyUI simple: uniform in training time over the σ table"))
    register(ScheduleSpec("normal", schedules.normal, "ComfyUI normal: uniform in the model's timestep"))
    register(ScheduleSpec("sgm_uniform", schedules.sgm_uniform, "ComfyUI sgm_uniform: normal, σ_min dropped for 0"))
    register(ScheduleSpec("ddim_uniform", schedules.ddim_uniform, "ComfyUI ddim_uniform: DDIM's uniform skip"))
    register(ScheduleSpec("beta", schedules.beta, "ComfyUI beta: Beta(0.6, 0.6) quantiles of training time"))
    register(
        ScheduleSpec(
            "linear_quadratic",
            schedules.linear_quadratic,
            "ComfyUI linear_quadratic (Mochi): linear, then quadratic to 0; for flow models",
        )
    )
    register(ScheduleSpec("kl_optimal", schedules.kl_optimal, "ComfyUI kl_optimal: uniform in arctan σ"))
