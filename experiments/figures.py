"""Paper figures and tables of one sweep, from the tracking store alone.

python experiments/figures.py                              # the most recent sweep
python experiments/figures.py sweep.sweep_id=<id>          # or sweep.parent_run_id=<run id>
python experiments/figures.py sweep.experiment=embsvd "sweep.filter=tags.embsvd.center = 'true'"
"""

from embsvd.io import openblas

openblas.prepare()  # before numpy loads: OpenBLAS's idle threads sleep at once

import hydra  # noqa: E402 (after OpenBLAS's set-up)
from omegaconf import DictConfig  # noqa: E402

from embsvd.pipeline import figures_job  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="figures")
def main(cfg: DictConfig) -> None:
    figures_job(cfg)


if __name__ == "__main__":
    main()
