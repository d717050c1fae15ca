"""The one copy of each rule for writing sizes and reasons (h2q_tui/units.py)."""

import pytest

from h2q_tui.units import first_line, first_sentence, format_number, format_size, short_size


@pytest.mark.parametrize(
    ("n", "binary", "text"),
    [
        (None, True, "n/a"),
        ("12", True, "n/a"),
        (True, True, "n/a"),
        (999, False, "999 B"),
        (1_300_000_000, False, "1.3 GB"),
        (1536, True, "1.5 KiB"),
        (5 * 1024**4, True, "5.0 TiB"),
    ],
)
def test_format_size(n, binary, text):
    assert format_size(n, binary=binary) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "n/a"), (312 * 1024**2, "312M"), (2 * 1024**3, "2.0G"), (150 * 1024**3, "150G")],
)
def test_short_size_fits_a_compact_card(n, text):
    assert short_size(n) == text


def test_first_line_and_first_sentence():
    exc = ValueError("bad weights. Run eval again.\nsecond line")
    assert first_line(exc) == "bad weights. Run eval again."
    assert first_sentence(exc) == "bad weights"
    assert first_line(KeyError()) == "KeyError"
    assert len(first_line(ValueError("x" * 500))) == 160


def test_format_number_shortens_a_pasted_integer():
    assert format_number(0.5) == "0.5"
    assert format_number(12345) == "12345"
    assert format_number(10**30) == "1000000000… (31 digits)"
