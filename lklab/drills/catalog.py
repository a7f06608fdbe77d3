"""Importing this module registers every drill, in the order `lklab drill list` shows them."""
from lklab.drills import sink  # noqa: F401
