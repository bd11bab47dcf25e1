"""The recovery watch's decision (stream.worker.recovery.RecoveryWatch): a rebalance is
asked for only when faust's recovery has records left and read none of them for the
whole stall time; progress, however slow, and the end of recovery reset it."""

from stream.worker.recovery import RecoveryWatch


def test_a_recovery_that_reads_nothing_is_stalled_after_the_stall_time_and_again_after_as_long():
    watch = RecoveryWatch(stall_s=30)
    assert not watch.stalled(True, 120, now=0.0)
    assert not watch.stalled(True, 120, now=29.9)
    assert watch.stalled(True, 120, now=30.0)
    assert not watch.stalled(True, 120, now=45.0)  # the rebalance gets as long again
    assert watch.stalled(True, 120, now=60.0)


def test_progress_however_slow_and_the_end_of_recovery_reset_the_watch():
    watch = RecoveryWatch(stall_s=30)
    for t, remaining in enumerate([500, 499, 499, 498], start=0):
        assert not watch.stalled(True, remaining, now=t * 20.0)
    assert not watch.stalled(False, 0, now=100.0)
    assert not watch.stalled(True, 498, now=101.0)  # a new recovery starts its own clock
    assert not watch.stalled(True, 498, now=130.0)
    assert watch.stalled(True, 498, now=131.0)


def test_nothing_left_to_read_is_never_a_stall():
    watch = RecoveryWatch(stall_s=30)
    assert not any(watch.stalled(True, 0, now=t) for t in range(0, 300, 10))


def test_a_first_stall_time_of_zero_takes_the_first_recovery_with_records_for_stalled():
    watch = RecoveryWatch(stall_s=30, first_stall_s=0)
    assert not watch.stalled(True, 0, now=0.0)
    assert watch.stalled(True, 7, now=1.0)
    assert not watch.stalled(True, 7, now=2.0) and watch.stalled(True, 7, now=31.0)


def test_a_rebalance_is_hung_only_without_progress_for_the_whole_limit():
    from stream.worker.recovery import RebalanceWatch

    watch = RebalanceWatch(limit_s=60.0)
    assert not watch.hung(True, (1, False, 0, 0), now=0.0)
    assert not watch.hung(True, (1, False, 0, 0), now=59.0)
    assert watch.hung(True, (1, False, 0, 0), now=60.0)
    # progress (a new assignment, a recovery, a loaded partition) starts the clock again
    watch = RebalanceWatch(limit_s=60.0)
    watch.hung(True, (1, False, 0, 0), now=0.0)
    assert not watch.hung(True, (1, True, 500, 0), now=50.0)
    assert not watch.hung(True, (1, True, 500, 0), now=100.0)
    assert watch.hung(True, (1, True, 500, 0), now=110.0)
    # not rebalancing: never hung, and the clock starts over
    watch = RebalanceWatch(limit_s=60.0)
    watch.hung(True, (2, False, 0, 0), now=0.0)
    assert not watch.hung(False, (2, False, 0, 0), now=70.0)
    assert not watch.hung(True, (2, False, 0, 0), now=80.0)
    assert not watch.hung(True, (2, False, 0, 0), now=139.0)
    # time the process was stopped (a frozen VM) does not count
    watch = RebalanceWatch(limit_s=60.0)
    watch.hung(True, (3, False, 0, 0), now=0.0)
    assert not watch.hung(True, (3, False, 0, 0), now=100.0, paused_s=90.0)
    assert watch.hung(True, (3, False, 0, 0), now=150.0)
