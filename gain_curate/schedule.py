"""`gain_curate.schedule.GainSchedule`, the public import the README and trainer code use;
the schedule lives in gain_curate.curriculum.schedule."""

from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams, mu_update, step_size

__all__ = ["GainSchedule", "ScheduleParams", "mu_update", "step_size"]
