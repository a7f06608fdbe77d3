"""Which stored outputs hold rows keyed by a user, and which architecture owns each."""
from __future__ import annotations

from lklab import views


def base_view(output: str) -> str:
    """The view an output belongs to: `user_sessions`, `user_sessions__v3`, `user_sessions@<build>`."""
    return output.split("@", 1)[0].split("__", 1)[0]


def keyed_by_user(output: str) -> bool:
    spec = views.VIEWS.get(base_view(output))
    return spec is not None and spec.keyed_by_user


def owner(output: str) -> str:
    """The store a reader would name: the Lambda speed state, a Lambda batch build, a Kappa output."""
    if "@" in output:
        return "serving (batch builds)"
    return "kappa outputs" if "__v" in output else "speed state"


def user_keyed_specs() -> list[views.ViewSpec]:
    return [spec for spec in views.VIEWS.values() if spec.keyed_by_user]
