"""A synchronous (RPO 0) policy schedule protects through Metro with a witness: every
flush at the primary is at the recovery zone when it returns, and an unplanned failover
loses nothing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from scenario import build, disk_images

from nxstore.leap import PolicySchedule

sys.path.insert(0, str(Path(__file__).parent.parent / "metro"))
from witness_helper import SECRET as WITNESS_SECRET  # noqa: E402
from witness_helper import InProcessWitness  # noqa: E402


def _wait_synchronous(pd, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while pd.metro_state().state != "synchronous":
        assert time.monotonic() < deadline, pd.metro_state()
        time.sleep(0.05)


def test_synchronous_schedule_enables_metro_and_fails_over_with_rpo_0(zones, tmp_path):
    with InProcessWitness(str(tmp_path / "witness")) as w:
        ca, fr = build(zones, background=True)
        ca.update_policy("ca-to-fr", schedules=[
            PolicySchedule(every=0, witness=w.address, witness_secret=WITNESS_SECRET)])
        out = ca.leap_tick()
        assert not out.errors, out
        pd = ca.protection_domain("leap.db")
        _wait_synchronous(pd)
        assert pd.metro_state().peer == "france"
        vd = ca.vm("db").vdisks[1]
        vd.write(0, b"rpo zero" * 512)
        vd.flush()  # returns only once france holds it too
        expected = disk_images(ca, "db")
        zones.down("canada")
        report = fr.recovery_plan("ca-plan").unplanned_failover()
        assert report.ok, report
        assert "Metro promote" in next(s.detail for s in report.steps
                                       if s.name == "activate leap.db")
        assert disk_images(fr, "db") == expected
        assert fr.vm("db").power_state == "on"
