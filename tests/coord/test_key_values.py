"""Values in etcd are read only in this build's format (docs/format.md, "Site coordination in
etcd"): a JSON object with "version": 1; anything else is refused naming the key."""

from __future__ import annotations

import pytest

from nxstore.coord.etcd import Entry
from nxstore.coord.keys import KEY_FORMAT_VERSION, encode
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
