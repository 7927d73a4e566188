"""Values in etcd are read only in this build's format (docs/format.md, "Site coordination in
etcd"): a JSON object with "version": 1 (2 for a schedule's transfer record); anything else
is refused naming the key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nxstore.coord.etcd import Entry
from nxstore.coord.keys import KEY_FORMAT_VERSION, encode
from nxstore.coord.transfers import RUNNING, SCHEDULE, Transfer
from nxstore.errors import CoordinationUnavailable


def _entry(value: bytes) -> Entry:
    return Entry("nxstore/leader", value, create_revision=3, mod_revision=3, lease=0)


def test_a_value_written_by_this_build_reads_back():
    assert _entry(encode({"worker": "w1"})).json() == {"version": KEY_FORMAT_VERSION,
                                                        "worker": "w1"}


@pytest.mark.parametrize(("value", "why"), [
    (b"not json", "does not hold a JSON object"),
    (b"[1, 2]", "does not hold a JSON object"),
    (b'{"worker": "w1"}', "format version None"),
    (b'{"version": 2, "worker": "w1"}', "format version 2"),
])
def test_other_values_are_refused_naming_the_key(value, why):
    with pytest.raises(CoordinationUnavailable, match=why) as err:
        _entry(value).json()
    assert "nxstore/leader" in str(err.value)


def test_a_schedule_record_is_version_2_and_a_vdisk_record_stays_version_1():
    vdisk = Transfer("a" * 20, "db", "s1", "tokyo", queued_at=1.0)
    schedule = Transfer("b" * 20, "", "", "tokyo", state=RUNNING, queued_at=2.0,
                        kind=SCHEDULE, pd="pdb", schedule_id=3, after=1000.5)
    v1 = _entry(vdisk.encode()).json()
    assert v1["version"] == KEY_FORMAT_VERSION and "kind" not in v1
    assert Transfer.decode(_entry(vdisk.encode())) == replace(vdisk, revision=3)
    # A build that reads only version 1 refuses the schedule record: never runs it as a
    # vDisk transfer.
    with pytest.raises(CoordinationUnavailable, match="format version 2"):
        _entry(schedule.encode()).json()
    assert Transfer.decode(_entry(schedule.encode())) == replace(schedule, revision=3)
