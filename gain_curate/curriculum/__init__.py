"""The curriculum over a scored run.

schedule.py draws.py   GainSchedule: the Gaussian over rank positions, mu moved by accuracy
rank_by.py             which order it draws over: angle, learnability or length
simulate.py export.py  its dry run and plan files, and exports for trainers
online.py              scoring inside a trainer's own prefill
"""
