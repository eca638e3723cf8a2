"""The soak with chaos (tests/soak.py) on a CI budget: two minutes (PYGCS_SOAK_SECONDS sets
it; `make soak` runs ten). A failure prints the seed: replay with PYGCS_SOAK_SEED=<seed>."""
import os
import random

import soak

from conftest import requires_root

pytestmark = requires_root
SECONDS = float(os.environ.get("PYGCS_SOAK_SECONDS", 120))
RSS_GROWTH_MIB = 2.0  # the last fifth of the run against the first, after warm-up


def test_soak_with_chaos_leaves_nothing_and_notifies_each_container_once(tmp_path):
    seed = int(os.environ.get("PYGCS_SOAK_SEED") or random.randrange(1 << 30))
    report = soak.soak(SECONDS, seed, svg=str(tmp_path / "soak.svg"))
    print(report.summary())
    assert report.ok(), report.summary()
    assert report.quiet_points >= 2 and report.created >= 10, report.summary()
    assert {"create", "exec", "kill_exec", "stop", "kill_init", "disconnect", "full_disk"} <= set(report.latencies)
    assert report.notified == report.created
    assert report.rss_growth() < RSS_GROWTH_MIB, report.summary()
    assert "<svg" in (tmp_path / "soak.svg").read_text()
