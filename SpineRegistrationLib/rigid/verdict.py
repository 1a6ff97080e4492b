"""The verdict on a rigid registration result: ``pass`` or ``doubt``, and why."""

from __future__ import annotations

from .config import RigidConfig

#: Reasons written with a ``doubt`` verdict (result.json ``verdict_reason``).
LOW_SIMILARITY = "low similarity"
RIVAL_ELSEWHERE = "rival at another place"
NETWORK_ONLY = "network only, not refined"


def judge(similarity: float, rival_margin: float | None, config: RigidConfig) -> tuple[str, str | None]:
    """("pass", None) or ("doubt", reason) for a final ``similarity`` and the lead over the best
    rival candidate at another place (None when the search kept none)."""
    if similarity < config.doubt_below:
        return "doubt", f"{LOW_SIMILARITY} ({similarity:.3f} < {config.doubt_below:g})"
    if rival_margin is not None and rival_margin < config.ambiguity_margin:
        return "doubt", f"{RIVAL_ELSEWHERE} (margin {rival_margin:.3f} < {config.ambiguity_margin:g})"
    return "pass", None
