"""Schema evolution: the compatibility check of a proposed event schema against the registered
versions (lklab.core.schemas), and the readability of the whole history with the current code."""
