"""The native frame MAC (native/framemac.h, `native.gmac_tag`) is AES-256-GMAC: it agrees
with the slow reference (native_reference.gmac) on any key, counter and split of the data,
and both give the published answers of FIPS-197 and of the GCM specification."""

from __future__ import annotations

import native_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nxstore.errors import InvalidArgument
from nxstore.store import native


def test_the_reference_gives_the_published_answers():
    # FIPS-197 appendix C.3: AES-256 of 00112233..ff under the key 00010203..1f.
    rk = ref.aes256_round_keys(bytes(range(32)))
    block = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert ref.aes256_encrypt_block(rk, block).hex() == "8ea2b7ca516745bfeafc49904b496089"
    # The GCM specification's test case 13: 256-bit zero key, zero IV, nothing to hash.
    assert ref.gmac(bytes(32), 0, []).hex() == "530f8afbc74536b9a963b4f1c4cb738b"
    assert native.gmac_tag(bytes(32), 0, []).hex() == "530f8afbc74536b9a963b4f1c4cb738b"


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**64 - 1),
       st.lists(st.binary(max_size=70), max_size=5))
def test_native_and_reference_agree(key, counter, parts):
    assert native.gmac_tag(key, counter, parts) == ref.gmac(key, counter, parts)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.data())
def test_the_tag_covers_the_joined_bytes_whatever_the_split(data, draw):
    key, cuts = bytes(range(32)), sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=4)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert native.gmac_tag(key, 7, [memoryview(p) for p in parts]) == native.gmac_tag(key, 7, [data])


def test_every_bit_of_key_counter_and_data_changes_the_tag():
    key, data = bytes(range(32)), bytes(range(100))
    tag = native.gmac_tag(key, 5, [data])
    assert native.gmac_tag(key, 6, [data]) != tag
    assert native.gmac_tag(bytes([1]) + key[1:], 5, [data]) != tag
    assert native.gmac_tag(key, 5, [data[:-1] + b"\xff"]) != tag
    assert native.gmac_tag(key, 5, [data[:-1]]) != tag


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidArgument, match="key of 16 bytes"):
        native.gmac_tag(bytes(16), 0, [])
    with pytest.raises(InvalidArgument, match="u64"):
        native.gmac_tag(bytes(32), 2**64, [])
    with pytest.raises(InvalidArgument, match="u64"):
        native.gmac_tag(bytes(32), -1, [])
