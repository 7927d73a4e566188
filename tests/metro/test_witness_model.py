"""The witness's compare-and-set rule against a model: a dict pair -> (epoch, active site).

Every request goes through WitnessClient to an in-process WitnessServer; `restart` stops
it and opens the data directory again (what was answered must still be there)."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from witness_helper import SECRET, InProcessWitness

from nxstore.errors import InvalidArgument
from nxstore.metro.witness_client import WitnessClient

PAIRS = st.sampled_from(["pa", "pb", "pc"])
SITES = st.sampled_from(["paris", "tokyo", "oslo"])


class WitnessModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.data = tempfile.mkdtemp(prefix="witness-model-")
        self.witness: InProcessWitness | None = InProcessWitness(self.data)
        self.model: dict[str, tuple[int, str]] = {}
        self.witness_id = self.witness.store.witness_id

    def client(self, site: str) -> WitnessClient:
        assert self.witness is not None
        return WitnessClient(self.witness.address, SECRET, site, "cluster-" + site)

    def stored(self, pair: str) -> int:
        return self.model.get(pair, (0, ""))[0]

    @rule(pair=PAIRS, site=SITES, expect_known=st.booleans(), off=st.integers(-2, 2),
          step=st.integers(-1, 3))
    def cas(self, pair: str, site: str, expect_known: bool, off: int, step: int) -> None:
        expect = self.stored(pair) if expect_known else max(0, self.stored(pair) + off)
        new = expect + step
        if new <= expect:
            try:
                self.client(site).cas(pair, expect, new, site)
            except InvalidArgument:
                return
            raise AssertionError(f"cas({pair}, {expect}, {new}) was not refused")
        ok, rec = self.client(site).cas(pair, expect, new, site)
        assert ok == (expect == self.stored(pair))
        if ok:
            self.model[pair] = (new, site)
            assert rec.changed_by == site
        assert (rec.epoch, rec.active_site) == self.model.get(pair, (0, ""))

    @rule(pair=PAIRS, site=SITES)
    def get(self, pair: str, site: str) -> None:
        rec = self.client(site).get(pair)
        assert (None if rec is None else (rec.epoch, rec.active_site)) == self.model.get(pair)

    @precondition(lambda self: self.witness is not None)
    @rule()
    def restart(self) -> None:
        assert self.witness is not None
        self.witness.close()
        self.witness = InProcessWitness(self.data)
        assert self.witness.store.witness_id == self.witness_id

    @invariant()
    def store_matches_model(self) -> None:
        assert self.witness is not None
        got = {r.pair: (r.epoch, r.active_site) for r in self.witness.store.records()}
        assert got == self.model

    def teardown(self) -> None:
        if self.witness is not None:
            self.witness.close()
            self.witness = None
        shutil.rmtree(self.data, ignore_errors=True)


WitnessModel.TestCase.settings = settings(max_examples=60, stateful_step_count=20,
                                          deadline=None)
test_witness_model = WitnessModel.TestCase
