"""Fuzzing the configuration parsers (config.py): any string is a value or ConfigError, as the
module promises ("every parser ... raises ConfigError naming the variable"), so a bad setting
stops the start with one line. The operator writes these, not a client: a secondary target with
a tenth of a parser's examples.

Findings, all fixed (tests at the end): a few inputs raised a bare ValueError (from ``int()``
or ``urlsplit``), which the entry point does not turn into its one-line message, and a duration
of 400 digits was accepted as infinite.
"""

from __future__ import annotations

import math

import pytest
from fuzzkit import budget
from hypothesis import given
from hypothesis import strategies as st

from cloudtaser_s3 import config
from cloudtaser_s3.config import ConfigError

VALUE = st.one_of(
    st.text("0123456789 .:[]-/=,abcdefKMGTimshttp:/[]", max_size=30),
    st.text(max_size=20),
)
PARSERS = {
    "address": lambda v: config.parse_address("X", v),
    "endpoint": lambda v: config.parse_endpoint("X", v),
    "size": lambda v: config.parse_size("X", v),
    "bool": lambda v: config.parse_bool("X", v),
    "region": lambda v: config.parse_region("X", v),
    "name": lambda v: config.parse_name("X", v),
    "auth mount": config.parse_auth_mount,
    "domains": lambda v: config.parse_domains("X", v),
    "duration": lambda v: config.parse_duration("X", v, allow_zero=True),
    "count": lambda v: config.parse_count("X", v, 100),
    "key map": lambda v: config.parse_key_map("X", v),
}


@budget(0.1)
@given(parser=st.sampled_from(sorted(PARSERS)), value=VALUE)
def test_any_setting_is_a_value_or_config_error(parser, value):
    try:
        got = PARSERS[parser](value)
    except ConfigError:
        return
    if parser == "duration":
        assert got >= 0 and not math.isnan(got)


@pytest.mark.parametrize(
    ("parser", "value"),
    [
        ("count", "²"),
        ("size", "9" * 5000),
        ("address", ":" + "9" * 5000),
        ("duration", "9" * 400),
    ],
    ids=["count-superscript", "size-5000-digits", "address-5000-digits", "duration-inf"],
)
def test_a_bad_setting_is_config_error(parser, value):
    """Were findings (int()'s ValueError, an infinite duration): fixed."""
    with pytest.raises(ConfigError):
        PARSERS[parser](value)


def test_an_endpoint_with_an_unclosed_bracket_is_config_error():
    with pytest.raises(ConfigError):
        PARSERS["endpoint"]("http://[::1")
