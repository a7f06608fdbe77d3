"""Kappa: one stream job per view version, writing a versioned output `<view>__v<N>`, published
behind an alias by a validated cutover. Modules: names (views, outputs, scopes, logic), plan
(arguments, tiers, estimate), job (the replay loop), records (build records), query (the
published version as readers see it), cutover (validate, swap, rollback). Callers use this
package's names."""
from lklab.engine.outputs import read_output
from lklab.kappa.job import ReplayProgress, ReplayResult, replay
from lklab.kappa.names import KAPPA_VIEWS, ReplayError, output_name, replay_scope, spec_for
from lklab.kappa.planner import ReplayPlan, check_args, check_request, parse_from, plan
from lklab.kappa.records import build_record

__all__ = ["KAPPA_VIEWS", "ReplayError", "ReplayPlan", "ReplayProgress", "ReplayResult", "build_record", "check_args",
           "check_request", "output_name", "parse_from", "plan", "read_output", "replay", "replay_scope", "spec_for"]
