"""StepTimer: steps are timed in segments that end exactly where the warm-up and each window end."""

from twinbench.training.loop import STEADY_WINDOWS, StepTimer


def _run(timer: StepTimer, epochs: int, batches: int, seconds_per_step) -> list[int]:
    """The training loop's segmentation: returns each segment's step count."""
    segments, step = [], 0
    for _ in range(epochs):
        pending = 0
        for b in range(batches):
            pending += 1
            if timer.edge_after(pending) or b == batches - 1:
                seconds = sum(seconds_per_step(step + i) for i in range(pending))
                timer.add(seconds, 10 * pending, pending)
                segments.append(pending)
                step += pending
                pending = 0
    return segments


def test_segments_end_at_the_warm_up_and_every_window():
    # 3 warm-up steps of 1 s, then steady steps of 0.1 s; 2 epochs of 23 steps.
    timer = StepTimer(warmup_steps=3, total_steps=46)
    segments = _run(timer, 2, 23, lambda step: 1.0 if step < 3 else 0.1)
    assert segments[0] == 3 and sum(segments) == 46
    assert timer.warmup_seconds == 3.0  # the warm-up alone, to the step
    assert timer.steady_samples == 430
    assert abs(timer.steady_seconds - 4.3) < 1e-9
    # (46 - 3) // 10 = 4 steps a window: ten whole windows, each 40 samples in 0.4 s.
    assert timer.window_steps == 4 and len(timer.windows) == STEADY_WINDOWS
    assert all(abs(w - 100.0) < 1e-6 for w in timer.windows)
    # No segment runs past a window's end: the windows are exact, even across the epoch's end.
    assert max(segments) <= 4


def test_no_warm_up_and_a_single_step_per_window():
    timer = StepTimer(warmup_steps=0, total_steps=5)
    segments = _run(timer, 1, 5, lambda step: 0.5)
    assert segments == [1, 1, 1, 1, 1] and timer.warmup_seconds == 0
    assert timer.windows == [20.0] * 5
