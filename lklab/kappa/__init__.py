"""Kappa: one stream job per view version, writing a versioned output `<view>__v<N>`
(job), published behind an alias by a validated cutover (cutover). Callers use this package's
names; the modules are job (naming, plan, replay, build records) and cutover (query, swap, rollback)."""
from lklab.engine.outputs import read_output
from lklab.kappa.job import (
    KAPPA_VIEWS,
    ReplayError,
    ReplayPlan,
    ReplayProgress,
    ReplayResult,
    build_record,
    check_args,
    check_request,
    output_name,
    parse_from,
    plan,
    replay,
    replay_scope,
    spec_for,
)

__all__ = ["KAPPA_VIEWS", "ReplayError", "ReplayPlan", "ReplayProgress", "ReplayResult", "build_record", "check_args",
           "check_request", "output_name", "parse_from", "plan", "read_output", "replay", "replay_scope", "spec_for"]
