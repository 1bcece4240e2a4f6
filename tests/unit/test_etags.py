"""Client-visible ETags: never an MD5 a tool could compare with its plaintext's, always mapped
back exactly."""

import pytest

from cloudtaser_s3 import etags

MD5 = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("store", "client"),
    [
        (f'"{MD5}"', f'"{MD5}-0"'),
        (MD5, f"{MD5}-0"),
        (f'W/"{MD5}"', f'W/"{MD5}-0"'),
        (f'"{MD5}-3"', f'"{MD5}-3"'),  # multipart ETags are not MD5s already
        ('"not-an-md5"', '"not-an-md5"'),
    ],
)
def test_round_trip(store, client):
    assert etags.to_client(store) == client
    assert etags.to_store(client) == store


def test_condition_lists_map_every_entry():
    assert etags.list_to_store(f'"{MD5}-0", "{MD5}-2"') == f'"{MD5}", "{MD5}-2"'
    assert etags.list_to_store("*") == "*"
