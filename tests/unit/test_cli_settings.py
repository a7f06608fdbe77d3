"""A bad LKLAB_* variable is one line naming the variable, its value and why; never a secret's value."""
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from lklab.cli import app
from lklab.cli.common import setting_errors
from lklab.core.config import Settings


@pytest.mark.parametrize(("variable", "value", "why"), [
    ("LKLAB_SPARK_CODEGEN", "maybe", "valid boolean"),
    ("LKLAB_PARTITIONS", "0", "greater than or equal to 1"),
    ("LKLAB_FAULTS", '{"nowhere": "refund_sign"}', "'nowhere' is not a layer"),
])
def test_a_bad_setting_is_one_line_with_its_variable_value_and_reason(tmp_path: Path, variable: str, value: str, why: str) -> None:
    result = CliRunner().invoke(app, ["query", "revenue_per_minute"], env={"LKLAB_HOME": str(tmp_path), variable: value})
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: bad LKLAB_* setting: {variable}=") and why in lines[0], lines[0]


def test_a_secret_setting_is_named_but_its_value_never_shown() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(api_token=918273645546372819)  # not a string: invalid
    line = setting_errors(raised.value)
    assert line.startswith("LKLAB_API_TOKEN: ") and "918273645546372819" not in line
