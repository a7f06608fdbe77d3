"""Where a result came from: the code version that produced it."""
from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
# what the lab writes into the repo (committed measurements): a changed one does not make the code dirty
OUTPUTS = ("drills/results", "drills/REPORT.md", "bench/RESULTS.md", "bench/results.json", "bench/replay_isolation.md")


@lru_cache(maxsize=1)
def git_sha() -> str:
    """HEAD's commit, with `-dirty` when tracked code differs from it (the lab's own outputs aside)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){path}" for path in OUTPUTS)],
                               capture_output=True, text=True, cwd=ROOT, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
