"""fai_rl.backends.tinker.common on hand-made inputs (no service): which saved states are still resume candidates,
so that their tinker_rounds/ files are kept (the files themselves: tests/test_tinker_resume.py, on the local server)."""

from __future__ import annotations

import time

from fai_rl.backends.tinker.common import resumable_steps

FMT = "%Y-%m-%dT%H:%M:%S"
NOW = time.mktime(time.strptime("2026-12-03T12:00:00", FMT))


def entry(kind: str, step: int, hours_ago: float, **extra) -> dict:
    return {"kind": kind, "step": step, "path": f"tinker://run/weights/{kind}-{step}",
            "time": time.strftime(FMT, time.localtime(NOW - hours_ago * 3600)), **extra}


ENTRIES = [entry("reference", 0, 9), entry("state", 10, 5), entry("state", 20, 3, deleted=True),
           entry("state", 30, 2), entry("state", 40, 0.5), entry("sampler", 40, 0.5)]


def test_every_state_not_deleted_is_a_candidate_without_limit_or_ttl():
    assert resumable_steps(ENTRIES, None, None, NOW) == {10, 30, 40}


def test_save_total_limit_keeps_the_newest_states_left_on_the_service():
    # 20 was deleted on the service (rotated before); of the others the newest 2 stay, also when the service refused
    # to delete 10 (it is not marked deleted): the limit is the user's bound on resume points
    assert resumable_steps(ENTRIES, 2, None, NOW) == {30, 40}
    assert resumable_steps(ENTRIES, 1, None, NOW) == {40}


def test_states_past_their_ttl_are_not_candidates():
    assert resumable_steps(ENTRIES, None, 4 * 3600, NOW) == {30, 40}  # 10 was saved 5 h ago
    assert resumable_steps(ENTRIES, None, 3600, NOW) == {40}
    assert resumable_steps(ENTRIES, 5, 3600, NOW) == {40}
