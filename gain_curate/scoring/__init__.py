"""The pure compute of scoring, tensors in and records out (no files: the executor and the
store do I/O), in the order a row travels:

    config.py                                 what a run is asked to do (ScoreConfig, ScoreResult)
    batching.py                               parts -> batches within the token budget
    forward.py prefill.py reduction.py        one prefill pass -> per-segment unit-vector sums
    prompt_end.py probe_layers.py             the end-of-prompt states a probe reads
    angles.py                                 the sums -> C_intra, C_inter, gain_score
    record.py                                 the scored row (one record, one schema)
    table.py                                  scored rows ranked into verl's schema
"""
