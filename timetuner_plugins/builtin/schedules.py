"""Built-in plugin: the σ schedules."""

from registry import ScheduleSpec, hookimpl

from .. import schedules


@hookimpl
def register_schedules(register):
    register(ScheduleSpec("uniform_t", schedules.uniform_t, "evenly spaced in the model's time"))
    register(ScheduleSpec("quadratic_t", schedules.quadratic_t, "quadratic in the model's time (DDIM's)"))
    register(ScheduleSpec("logsnr", schedules.logsnr_uniform, "evenly spaced in log-SNR"))
    register(ScheduleSpec("karras", schedules.karras, "Karras et al. 2022, rho=7"))
