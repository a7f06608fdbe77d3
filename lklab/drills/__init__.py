"""Drills: one named fault applied to Lambda and Kappa on the same live stream, readers polling
both through the HTTP API, every read scored against the oracle (see README, Drills)."""
from lklab.drills.registry import DRILLS, Drill, DrillContext, DrillError, register
from lklab.drills.result import DrillResult

__all__ = ["DRILLS", "Drill", "DrillContext", "DrillError", "DrillResult", "register"]  # lookups: lklab.drills.catalog
