"""Leap: policy-based disaster recovery over availability zones.

Zones (`zones`) are paired sites; protection policies (`policies`) protect VMs by category
and whole containers from a primary zone to recovery zones, through protection domains the
Leap tick manages (`membership`); recovery plans (`plans`) say how VMs come up at the
recovery zone, and their actions (`recovery`) run there. Definitions are kept alike at
every zone they name (`definitions`) over LEAP_REQUEST (`remote`). `service.LeapService`
is what the Cluster facade holds.
"""

from __future__ import annotations

from . import rows as _rows  # noqa: F401  (registers the layer's catalogue tables)
from .plans import NetworkMapping, PlanSpec, Stage
from .policies import PolicySchedule, ProtectionPolicy
from .recovery import PlanReport, PlanStep
from .zones import AvailabilityZone, Endpoint

__all__ = ["AvailabilityZone", "Endpoint", "NetworkMapping", "PlanReport", "PlanSpec",
           "PlanStep", "PolicySchedule", "ProtectionPolicy", "Stage"]
