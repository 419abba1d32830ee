"""Reading a checkpoint: one token matrix, its tokenizer and its ``Vocabulary``; numpy
and the ``tokenizers`` library only (no Hydra, no MLflow, no model is ever built).

- ``checkpoint``: ``CheckpointSpec`` -> ``Checkpoint`` (``W``, tokenizer, provenance);
- ``vocabulary``: what the analysis and the checks read about the tokens;
- ``frequency``: word frequencies of the tokens, cached per vocabulary;
- ``weights``, ``gguf_file``, ``tokenizer``: the file formats underneath;
- ``cache``: what is kept between runs, written atomically and checked by checksum.
"""
