"""Every registered check, in the order RELIABILITY.md shows them. Importing a check's module registers it."""
from __future__ import annotations

from lklab.chaos.registry import CHECKS, ChaosError, Check

ORDER = ("stream-crashes", "batch-crashes", "broker-faults", "bad-input", "http-api", "security")


def all_checks() -> list[Check]:
    _register()
    return sorted(CHECKS.values(), key=lambda c: ORDER.index(c.name) if c.name in ORDER else len(ORDER))


def check(name: str) -> Check:
    _register()
    try:
        return CHECKS[name]
    except KeyError:
        raise ChaosError(f"unknown check {name!r}; one of: {', '.join(c.name for c in all_checks())}") from None


def _register() -> None:
    import importlib
    import pkgutil

    import lklab.chaos as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("check_"):  # lklab/chaos/check_<name>.py: one check each
            importlib.import_module(f"lklab.chaos.{module.name}")
