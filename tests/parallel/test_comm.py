"""The in-process communicator: sums in rank order, gathers in rank order, fails instead of hanging."""

import threading
import time

import numpy as np
import pytest

from rocmforge.parallel.comm import CommError, InProcessGroup


def _run(n, fn, timeout=30.0):
    comms = InProcessGroup(n, timeout=timeout).communicators()
    out, errors = [None] * n, [None] * n

    def task(r):
        try:
            out[r] = fn(comms[r])
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            comms[r].abort()
            errors[r] = exc

    threads = [threading.Thread(target=task, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return out, errors, comms


def test_all_reduce_sums_in_rank_order_on_every_rank():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((3, 1000)).astype(np.float32) * 10 ** r for r in range(4)]
    want = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    out, errors, comms = _run(4, lambda c: c.all_reduce(parts[c.rank]))
    assert errors == [None] * 4
    for got in out:
        np.testing.assert_array_equal(got, want)       # bit for bit, the same on every rank
    assert all(c.n_calls == 1 for c in comms) and all(c.comm_seconds() >= 0 for c in comms)


def test_all_gather_concatenates_in_rank_order():
    out, errors, _ = _run(3, lambda c: c.all_gather(np.full((2, c.rank + 1), c.rank, np.float32)))
    assert errors == [None] * 3
    for got in out:
        np.testing.assert_array_equal(got, np.array([[0, 1, 1, 2, 2, 2]] * 2, np.float32))


def test_a_failing_rank_releases_the_others():
    def fn(c):
        if c.rank == 2:
            raise ValueError("rank 2 broke")
        return c.all_reduce(np.ones(4, np.float32))

    t0 = time.perf_counter()
    out, errors, _ = _run(3, fn, timeout=60.0)
    assert time.perf_counter() - t0 < 10          # the abort, not the 60 s timeout, ended the wait
    assert isinstance(errors[2], ValueError)
    assert all(isinstance(e, CommError) for e in errors[:2])


def test_a_missing_rank_times_out():
    group = InProcessGroup(2, timeout=0.2)
    with pytest.raises(CommError, match="did not arrive within"):
        group.communicators()[0].all_reduce(np.ones(2, np.float32))
