"""Examine finished experiments: parse their logs into metrics and table them (SPEC E1-E6)."""

from .examiner import Examiner, ExamineError, Experiment, latest_log

__all__ = ["Examiner", "ExamineError", "Experiment", "latest_log"]
