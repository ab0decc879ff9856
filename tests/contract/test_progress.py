"""`progress.Progress`: step k of n, the mean seconds per step of this process, the time left."""

from flan_t5_detox.contract.progress import Progress, clock_text


def test_progress_says_how_far_how_fast_and_how_long_is_left():
    now = [100.0]
    progress = Progress(20, "step", first=4, clock=lambda: now[0])  # resumed after step 4
    now[0] += 3.0
    assert progress.done(5) == "step 5 of 20, 3 s each, about 0:00:45 left"
    now[0] += 5.0  # two more steps in 5 s: 8 s for 3 steps
    assert progress.done(7) == "step 7 of 20, 2.67 s each, about 0:00:35 left"
    assert progress.done(20).endswith("about 0:00:00 left")


def test_clock_text():
    assert [clock_text(s) for s in (0, 59.4, 61, 3600 * 3 + 62, -5)] == [
        "0:00:00",
        "0:00:59",
        "0:01:01",
        "3:01:02",
        "0:00:00",
    ]
