"""embsvd's Hydra sweeper (``hydra/sweeper=embsvd``, conf/config.yaml's default): Hydra
finds sweepers only in the ``hydra_plugins`` namespace package."""
