"""The curriculum over a scored run.

schedule.py            GainSchedule: the Gaussian over rank positions, mu moved by accuracy
params.py state.py     its parameters and rule; its history and checkpoint (ScheduleState)
draws.py               how an epoch is drawn (an exponential race, cached per epoch)
rank_by.py             which order it draws over: angle, learnability or length
simulate.py steps.py   its dry run and plan file, and the per-step summary and picture
export.py              the plan as files for trainers (verl; export_openrlhf.py: OpenRLHF)
online.py              scoring inside a trainer's own prefill
"""
