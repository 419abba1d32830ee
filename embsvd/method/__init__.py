"""The method of ../shared/method.md on arrays: no Hydra, no MLflow.

- ``analysis``: a group's SVD, the vocabulary's projections, the pairwise statistics
  (``analyze`` -> ``AnalysisResult``);
- ``svd``: the one sign convention every decomposition follows;
- ``geometry``: unit rows, whitening and the whole vocabulary's exact top components;
- ``backend``: the same linear algebra with torch on an accelerator.
"""
