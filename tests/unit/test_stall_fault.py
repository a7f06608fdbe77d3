"""The stall_in_commit fault: one registry entry, switched on per layer through Settings.faults;
not a view-logic fault; the stall is a no-op unless its layer names it."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from lklab import views
from lklab.core.config import Settings
from lklab.views.faults import STALL_IN_COMMIT, stall_in_commit, stall_marker, with_fault


def test_stall_is_a_fault_of_the_publishing_layers(tmp_path) -> None:
    settings = Settings(home=tmp_path, faults={"batch": STALL_IN_COMMIT, "cutover": STALL_IN_COMMIT})
    assert Settings.model_validate(settings.model_dump()) == settings
    with pytest.raises(ValidationError, match="not a layer"):
        Settings(home=tmp_path, faults={"promote": STALL_IN_COMMIT})
    with pytest.raises(ValueError, match="not a view-logic fault"):
        with_fault(views.view("revenue_per_minute"), STALL_IN_COMMIT)


def test_stall_only_where_switched_on(tmp_path) -> None:
    settings = Settings(home=tmp_path, faults={"batch": STALL_IN_COMMIT})
    stall_in_commit(settings, "cutover")  # another layer: returns at once
    stall_in_commit(None, "batch")
    assert not stall_marker(settings, "batch").exists() and not stall_marker(settings, "cutover").exists()
