"""embsvd: SVD of token-embedding submatrices, as a Hydra + MLflow research harness.

Data flows one way through the library:

    checkpoint  ->  groups  ->  analysis  ->  tracking / plotting
    (W_E, tokenizer) (token ids) (AnalysisResult)

Only ``embsvd.pipeline`` and ``embsvd.pipeline.config`` know about Hydra; only ``embsvd.tracking``
imports MLflow.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("embsvd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
