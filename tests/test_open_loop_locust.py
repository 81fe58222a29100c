"""The Locust user's open loop against the gateway: requests fall due at the rate asked, each
user's schedule its own, and the run's totals count the requests sent late and over the bound."""

import pytest

from twinbench.experiments.loadtest import run_locust

pytestmark = pytest.mark.integration


def test_locust_users_send_on_a_schedule_and_count_late_and_over_the_bound(
    stack, trained, tmp_path
):
    job, _ = trained["torch"]
    model = next(e.model_name for e in job.exports if e.format == "onnx")
    rate, users, seconds = 40.0, 2, 4
    stats = run_locust(
        stack.gateway_address, model, users, f"{seconds}s", 1, None, tmp_path / "open",
        rate=rate, arrivals="constant", max_in_flight=50,
    )  # fmt: skip
    assert {"late", "over_bound"} <= set(stats), stats
    # At most users x rate x seconds requests (320), however fast the server: two users of a
    # closed loop would send thousands to LeNet-5 in 4 s. (A busy machine may send fewer: Locust's
    # clock runs while its users start.)
    assert 0 < stats["requests"] <= 1.1 * users * rate * seconds, stats
    assert stats["failures"] == stats["over_bound"] == 0, stats
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"], stats
