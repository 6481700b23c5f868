"""Seconds per tuning iteration on ``digits-ddpm`` (DDIM, NFE 10, batch 256, 20 iterations after the teacher), one
process or under torchrun, for the data-parallel throughput in docs/scale.md:

    OMP_NUM_THREADS=2 python tools/dp_throughput.py 2
    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 tools/dp_throughput.py 1
"""

import sys
import time

import torch

import registry
from timetuner_plugins.tuning import parallel
from timetuner_plugins.sampling.run import make_sigmas
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

threads, iters = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20
torch.set_num_threads(threads)
shards = parallel.init_from_env("cpu")
model = registry.load_model("digits-ddpm")
sigmas = make_sigmas(model, "quadratic_t", 10)
config = TuneConfig(iters=iters, batch=256, pool=512, select=False, show_progress=False, checkpoint_every=10**6)
tuner = Tuner(model, "ddim", sigmas, "quadratic_t", config)
tuner.teacher()
started = time.perf_counter()
result = tuner.tune()
seconds = (time.perf_counter() - started) / iters
if shards is None or shards.rank == 0:
    world = 1 if shards is None else shards.world
    print(f"{world} process(es) × {threads} thread(s): {seconds:.3f} s/iter; τ[:3] {result.tau[:3].tolist()}")
