"""Helpers of the NearSync tests (conftest puts this directory on sys.path)."""

from __future__ import annotations

from datetime import timedelta

from test_e2e import SECRET, InProcessDaemon  # noqa: F401 - re-exported for the tests

import nxstore

BS = 4096


def protect(c: nxstore.Cluster, site: str, address: str, vdisks, every: float = 1.0,
            keep_remote: int = 3):
    """Register `site`, put `vdisks` in PD "pd" with a NearSync schedule to it."""
    c.add_remote_site(site, address, SECRET)
    pd = c.create_protection_domain("pd", entities=list(vdisks))
    pd.add_schedule(every=timedelta(seconds=every), keep_local=3, keep_remote={site: keep_remote})
    return pd


def tick(c: nxstore.Cluster, clock, seconds: float = 1.0):
    """Advance the fake clock and run the schedules; the ScheduleRuns."""
    clock.advance(seconds)
    return c.run_schedules()


def states(pd, site: str) -> list[str]:
    """The sequence of states `site` went through, from the transition history."""
    hist = pd.replication_state()[site].history
    return [hist[0].old] + [t.new for t in hist]
