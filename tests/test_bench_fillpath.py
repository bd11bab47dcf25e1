"""bench.fillpath: it measures this checkout in a fresh interpreter, and refuses a
directory that is not a checkout in one line."""

from __future__ import annotations

from pathlib import Path

from bench import fillpath

ROOT = Path(__file__).resolve().parent.parent


def test_one_run_times_every_fill_and_counts_what_they_published():
    us, published = fillpath.one(ROOT, 500)
    assert 0 < us < 100_000
    # Each of these fills (a fixed seed) moves its account's IM by a cent or more, so each
    # publishes a requirement, and at most one call besides.
    assert 500 <= published <= 1_000


def test_a_directory_that_is_not_a_checkout_is_refused_in_one_line(tmp_path, capsys):
    assert fillpath.main(["--rounds", "1", f"x={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a checkout of this project" in err
