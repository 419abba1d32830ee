"""Run one analysis job (or a sweep with -m): compose the config, hand it to the pipeline.

python experiments/run.py target=eu_countries analysis.center=false
python experiments/run.py -m +experiment=seed_replication
"""

import gc

from embsvd.io import openblas

openblas.prepare()  # before numpy loads: OpenBLAS's idle threads sleep at once

# The cyclic collector is off until the first job (or a sweep's open) settles the heap
# (embsvd.pipeline.job.settle_heap): its full passes over the objects that imports and
# Hydra's composition make, and keep, cost about 0.4-0.5 s of every run's start.
gc.disable()

import hydra  # noqa: E402 (after the collector is off)
from omegaconf import DictConfig  # noqa: E402

from embsvd.pipeline import run_job  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


if __name__ == "__main__":
    main()
