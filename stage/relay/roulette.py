"""The roulette: which live stage a viewer lands on next.

Stages with fewer viewers are more likely (weight 1 / (1 + watching)), so a new stage is
found quickly and a crowded one does not take everyone. The stage you are on is never
chosen while another is live, and your last few stages only when nothing else is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    stage_id: str
    watching: int


def choose(
    candidates: Sequence[Candidate],
    current: str | None = None,
    recent: Sequence[str] = (),
    rng: random.Random | None = None,
) -> Candidate | None:
    others = [c for c in candidates if c.stage_id != current]
    if not others:
        return None
    fresh = [c for c in others if c.stage_id not in recent] or others
    weights = [1.0 / (1 + c.watching) for c in fresh]
    return (rng or random).choices(fresh, weights=weights, k=1)[0]
