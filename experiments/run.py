"""Run one analysis job (or a sweep with -m): compose the config, hand it to the pipeline.

python experiments/run.py target=eu_countries analysis.center=false
python experiments/run.py -m +experiment=seed_replication
"""

import hydra
from omegaconf import DictConfig

from embsvd.pipeline import run_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


if __name__ == "__main__":
    main()
