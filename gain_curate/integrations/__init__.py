"""Thin adapters that let trainers draw over a scored run (one module per trainer; each calls
curriculum/ and reads the shards): verl.py (0.5 - 0.8 sampler), verl_v1.py (0.9 V1 replay
buffer), trl.py + trl_state.py (GRPOTrainer and its checkpoints), openrlhf.py (a prompt file
in plan order). _common.py: what they share (the rank-by order of a trainer's rows)."""
