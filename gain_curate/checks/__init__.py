"""Does the signal hold on your model?

report.py                          `inspect`: a run's counts, ranges, top and bottom
validate.py run_inputs.py          `validate`: its phases (sample, score, gradients, outputs)
validate_types.py validate_rl.py   their typed inputs and results; the --rollouts phase
supervised.py gradients.py         the supervised check: up_proj gradient norms per prompt
generation.py sampling.py          K completions per prompt from one shared prefill
rewards.py rollouts.py grpo.py     their rewards, pass rates and GRPO gradient norms
probe.py probe_features.py         a pass-rate probe on the pooled prefill states
rollout_stats.py rankings.py served.py   every ranking against the same rollouts, with
                                   bootstrap intervals, and what the curriculum serves
calibrate.py pass_rates.py recommend.py nested.py   `validate --pass-rates`: which
                                   ranking, from pass rates you have (nested-CV probe)
predict.py                         `predict`: a probe applied to a scored run
plots.py                           validate.png
"""
