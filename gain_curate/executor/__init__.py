"""The executor: it owns the run folder's work area and runs the pure compute of scoring/
over it, in one process, per GPU, per torchrun rank, per --shard, or on Ray.

    prepare.py prepared.py    the input tokenized once per run, cut into parts, saved
    recorded.py               what the run records of its conversations
    workdir.py                OUT/.gain-curate: parts, markers, heartbeats, the lock
    score.py                  one part: its planned batches -> ScoredRows
    launch.py claim.py        which parts this process scores; taking OUT for the run
    workers.py                score parts, mark them done; the ranks' waits
    records.py                run.json, a scored part, a rank's heartbeat, typed
    ray_backend.py            the same parts as Ray tasks
    merge.py                  every part ranked into verl's schema, states, the manifest
"""
