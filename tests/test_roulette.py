"""The roulette's choice: fair to small stages, never the stage you are on."""

import random
from collections import Counter
from dataclasses import dataclass

from stage.relay.roulette import choose


@dataclass
class Live:
    stage_id: str
    watching: int = 0


def test_never_the_current_stage_and_nothing_when_alone():
    stages = [Live("a"), Live("b")]
    rng = random.Random(1)
    assert all(choose(stages, current="a", rng=rng).stage_id == "b" for _ in range(200))
    assert choose([Live("a")], current="a") is None
    assert choose([]) is None


def test_no_return_to_the_last_three_while_others_are_live():
    stages = [Live(s) for s in "abcde"]
    rng = random.Random(2)
    recent: list[str] = []
    current = "a"
    for _ in range(1000):
        picked = choose(stages, current=current, recent=recent[-3:], rng=rng).stage_id
        assert picked != current and picked not in recent[-3:], (picked, recent[-3:])
        recent.append(picked)
        current = picked


def test_every_stage_gets_at_least_half_its_fair_share():
    # Five live stages, 100 viewers who all start on the first one, and 1,000 Nexts
    # by random viewers: each Next moves a viewer, so audiences shift as they go.
    stages = {s: Live(s) for s in "abcde"}
    rng = random.Random(3)
    viewers = [{"on": "a", "recent": ["a"]} for _ in range(100)]
    stages["a"].watching = 100
    landed = Counter()
    for _ in range(1000):
        viewer = rng.choice(viewers)
        picked = choose(
            list(stages.values()),
            current=viewer["on"],
            recent=viewer["recent"][-3:],
            rng=rng,
        )
        stages[viewer["on"]].watching -= 1
        picked.watching += 1
        viewer["on"] = picked.stage_id
        viewer["recent"].append(picked.stage_id)
        landed[picked.stage_id] += 1
    fair = 1000 / len(stages)
    assert all(landed[s] >= fair / 2 for s in stages), landed
    assert all(stage.watching >= 0 for stage in stages.values())


def test_fewer_viewers_more_likely():
    stages = [Live("a", 40), Live("b", 10), Live("c", 3), Live("d", 0)]
    rng = random.Random(5)
    landed = Counter(choose(stages, rng=rng).stage_id for _ in range(2000))
    assert landed["d"] > landed["c"] > landed["b"] > landed["a"], landed


def test_fair_share_with_equal_audiences():
    stages = [Live(s, 2) for s in "abcde"]
    rng = random.Random(4)
    landed = Counter()
    recent: list[str] = []
    current = None
    for _ in range(1000):
        picked = choose(stages, current=current, recent=recent[-3:], rng=rng).stage_id
        landed[picked] += 1
        recent.append(picked)
        current = picked
    assert min(landed.values()) >= 100, landed
