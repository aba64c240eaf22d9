"""Does the signal hold on your model?

report.py                          `inspect`: a run's counts, ranges, top and bottom
validate.py run_inputs.py          `validate`: the sample, the checks, the outputs
supervised.py gradients.py         the supervised check: up_proj gradient norms per prompt
generation.py sampling.py          K completions per prompt from one shared prefill
rewards.py rollouts.py grpo.py     their rewards, pass rates and GRPO gradient norms
probe.py probe_features.py         a pass-rate probe on the pooled prefill states
rollout_stats.py rankings.py served.py   every ranking against the same rollouts, with
                                   bootstrap intervals, and what the curriculum serves
predict.py                         `predict`: a probe applied to a scored run
plots.py                           validate.png
"""
