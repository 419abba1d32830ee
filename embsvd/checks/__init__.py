"""The checks of an analysis: ``run_checks(W, groups, result, vocab, ChecksConfig(...))``.

- ``run``: the entry point, its settings (``ChecksConfig``) and result (``ChecksResult``);
- ``null`` and ``matching``: random groups of words like the group's;
- ``stability``: jackknife and leave-one-out refits; ``heldout``: ranks of left-out words;
- ``confounds``: axes against token norm, id and length; ``order``: the declared order.
"""
