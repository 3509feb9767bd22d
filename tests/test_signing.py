"""Signed tokens accept exactly the text they were issued as."""

import pytest

from propel.signing import BadToken, sign, unsign

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_round_trip_and_every_other_spelling_of_the_mac_is_refused():
    token = sign("k", {"a": 1}, "p")
    assert unsign("k", token, "p") == {"a": 1}
    body, mac = token.split(".")
    last = ALPHABET.index(mac[-1])
    # the last character of 16 bytes in base64 carries 2 bits; the other 4 are padding
    same_bytes = {ALPHABET[(last & 0b110000) | low] for low in range(16)} - {mac[-1]}
    assert len(same_bytes) == 15
    for char in same_bytes:
        with pytest.raises(BadToken):
            unsign("k", f"{body}.{mac[:-1]}{char}", "p")
    with pytest.raises(BadToken):
        unsign("k", token, "other purpose")
    with pytest.raises(BadToken):
        unsign("other key", token, "p")
