"""Importing this module registers every drill, in the order `lklab drill list` shows them."""
from lklab.drills import crash_loop  # noqa: F401
