"""What Kappa calls things: the views it runs, a version's output, its consumer scope, its logic."""
from __future__ import annotations

from lklab import views
from lklab.views.faults import with_fault

KAPPA_VIEWS = tuple(views.VIEWS)  # Kappa runs every view (no batch layer behind it)


class ReplayError(RuntimeError):
    """A replay that cannot start; nothing was written."""


def output_name(view: str, version: int) -> str:
    return views.VersionedOutput(view, version).name


def replay_scope(view: str, version: int) -> str:
    """The replay's consumer group, and the scope of its dedup state and offsets."""
    return f"lklab-replay-{output_name(view, version)}"


def spec_for(view: str, version: int, fault: str | None = None) -> views.ViewSpec:
    """The view's stream logic for version N (logic version N where the view has it, else its
    newest: user_sessions v1 has the midnight bug, v2 the fix), writing into `<view>__v<N>`;
    with a named fault built in when a drill deployed one (Settings.faults["kappa"])."""
    return with_fault(views.spec_at(view, version).for_output(views.VersionedOutput(view, version)), fault)


