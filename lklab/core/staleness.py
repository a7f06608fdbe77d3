"""When a producer (the Lambda speed layer, a live Kappa job) is stale, and what a reader gets then.

One rule judges a producer from its heartbeat age and lag against a budget; one function applies
a view's reader policy (Settings.reader_policy_for) to an answer: serve-stale answers flagged,
error refuses with StaleAnswer, which the HTTP API turns into a 503 and the CLI into exit 3."""
from __future__ import annotations

from collections.abc import Collection

from lklab.core.config import ERROR, ReaderPolicy, Settings


class StaleAnswer(RuntimeError):
    """An answer whose producer is stale, refused because the view's reader policy is `error`.
    The message is one line: the view and the reason."""


def stale_reason(producer: str, heartbeat_age_s: float | None, lag: int | None, heartbeat_timeout_s: float,
                 max_lag: int) -> str | None:
    """Why `producer` is stale, or None while it beat within the timeout and its lag is within
    the budget (an unknown lag, Kafka not answering, leaves the heartbeat to decide)."""
    if heartbeat_age_s is None:
        return f"{producer} has never run"
    if heartbeat_age_s > heartbeat_timeout_s:
        return f"{producer}: heartbeat is {heartbeat_age_s:.0f}s old, over the {heartbeat_timeout_s:g}s timeout (down?)"
    if lag is not None and lag > max_lag:
        return f"{producer}: lag {lag} records exceeds {max_lag}"
    return None


def apply_reader_policy(settings: Settings, view: str, stale: bool, reason: str | None) -> ReaderPolicy:
    """The view's reader policy, for the answer to carry; StaleAnswer if the answer is stale and
    the policy is `error`. The one place the decision is taken, for every reader of every architecture."""
    policy = settings.reader_policy_for(view)
    if stale and policy == ERROR:
        raise StaleAnswer(f"{view} is stale: {reason} (reader policy error)")
    return policy


def check_reader_policy_views(settings: Settings, known: Collection[str]) -> None:
    """ValueError naming the first key of reader_policy_views that is not a view. The views
    live above the core, so the entry points (CLI, API) pass them in."""
    for view in settings.reader_policy_views:
        if view not in known:
            raise ValueError(f"unknown view {view!r}; one of: {', '.join(known)}")
