"""`flagserver demo` tells its story: a healthy release reaches 100%, a harmful one is rolled back."""

from __future__ import annotations

import io

import pytest

from flagserver.demo import run_demo


@pytest.mark.slow
def test_the_demo_completes_a_healthy_release_and_rolls_back_a_harmful_one() -> None:
    # Given the demo, its output captured, with more users a second than its default
    out = io.StringIO()

    # When it runs to the end (a real server, controller and SDK on loopback)
    results = run_demo(seconds_per_interval=1.0, users_per_second=3000, port=0, keep_serving=False, out=out)

    # Then the healthy release completed and the harmful one was rolled back, saying why
    assert results == {"new-checkout": "completed", "checkout-redesign": "rolled_back"}, out.getvalue()
    text = out.getvalue()
    assert "promoted to 25%" in text and "promoted to 50%" in text and "promoted to 100%" in text
    assert "rolled back to 0%: checkout conversion" in text
    assert "the SDK now serves it to nobody" in text
