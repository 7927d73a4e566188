"""The engine's model, crash, corruption, snapshot, concurrency and defrag tests, re-run
unchanged with every cluster's sealed extent groups on S3 (a real SeaweedFS on 127.0.0.1).

The tests are imported from their modules, so pytest runs them here a second time, under
the fixture `extent_groups_on_s3` (tests/conftest.py): every `Engine.create` /
`Cluster.create` the test (or a child process it starts) makes gets a fresh s3:// prefix,
and its store records a 64 KiB group size (backend.conf), so groups seal and go to S3
every 16 records. Crash children inherit the credentials through the environment and read
the rest from the recorded config. The fixture fails a test that put no group on S3.
Not here: tests that damage local extent group files by path (on S3 a sealed group is an
object: test_s3_extent_store.py damages those); tests too small to seal a group, or whose
hypothesis examples may not (test_changed_blocks_property); the defrag tests that count a
1 MiB window's read runs (at 64 KiB groups a window spans 16 groups, so >= 16 runs
whatever defrag does).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from test_concurrency import test_threads_on_one_and_several_vdisks  # noqa: F401
from test_corruption import (  # noqa: F401 (collected again here, on S3)
    test_flipped_byte_in_catalogue,
    test_flipped_byte_in_fingerprint_index,
    test_flipped_byte_in_map_layer,
    test_healthy_cluster_scrubs_clean,
)
from test_crash import (  # noqa: F401
    test_crash_rounds_short,
    test_gc_between_drain_steps_keeps_acknowledged_data,
    test_gc_then_kill_keeps_acknowledged_data,
)
from test_defrag import test_defragment_changes_no_image  # noqa: F401
from test_engine_model import BackgroundEngineMachine, EngineMachine
from test_snapshots import (  # noqa: F401
    test_clone_is_independent_and_shares_space,
    test_deep_chain_collapse_and_deletes,
    test_snapshot_basics_and_clock,
    test_snapshot_group_is_crash_consistent,
    test_snapshots_are_immutable,
)

pytestmark = pytest.mark.usefixtures("extent_groups_on_s3")

_MODEL_SETTINGS = settings(max_examples=25, stateful_step_count=50, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.usefixtures("extent_groups_on_s3")
class TestEngineModelOnS3(EngineMachine.TestCase):
    settings = _MODEL_SETTINGS


@pytest.mark.usefixtures("extent_groups_on_s3")
class TestEngineModelBackgroundOnS3(BackgroundEngineMachine.TestCase):
    settings = _MODEL_SETTINGS
