"""Replication end to end with both sites' sealed extent groups on S3 (a real SeaweedFS on
127.0.0.1): the tests of test_e2e.py, imported unchanged, run again here under the fixture
`extent_groups_on_s3` (tests/conftest.py). The target daemons are `nxstore serve`
processes: they open their clusters' recorded S3 config with the credentials inherited
from the environment."""

from __future__ import annotations

import pytest
from test_e2e import (  # noqa: F401 (collected again here, on S3)
    site,
    test_clone_with_one_percent_changed_sends_one_percent,
    test_flipped_byte_fails_cleanly_and_stores_nothing_corrupt,
    test_resume_after_target_killed_sends_only_what_is_missing,
    test_seed_and_incrementals_are_byte_identical,
)

pytestmark = pytest.mark.usefixtures("extent_groups_on_s3")
S3_GROUP_BYTES = 1024 * 1024  # bytes: these tests move up to 256 MiB; 1 MiB groups keep it brisk
