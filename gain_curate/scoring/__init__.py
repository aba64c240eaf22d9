"""The scoring pipeline, in the order a row travels (each step imports only the ones above
it, and runtime/ below):

    sources.py readers.py hub.py answers.py   the input -> questions, answers, data_source
    template.py conversation.py               the scoring conversation and its token segments
    recorded.py                               what the run records of its conversations
    prepare.py prepared.py                    tokenized once per run, cut into parts, saved
    batching.py                               parts -> batches within the token budget
    forward.py prefill.py reduction.py        one prefill pass -> per-segment unit-vector sums
    angles.py                                 the sums -> C_intra, C_inter, gain_score
    record.py                                 the scored row (one record, one schema)
    score.py                                  one part: batches -> ScoredRows
    workdir.py                                OUT/.gain-curate: parts, markers, heartbeats
    table.py merge.py                         every part ranked into verl's schema
    store.py                                  every file written, whole or not at all
    config.py launch.py workers.py ray_backend.py   one process, per GPU, per torchrun rank,
                                              per --shard, or Ray; resume and merge
"""
