"""embsvd's Hydra launcher (``hydra/launcher=embsvd``, conf/config.yaml's default): Hydra
finds launchers only in the ``hydra_plugins`` namespace package."""
