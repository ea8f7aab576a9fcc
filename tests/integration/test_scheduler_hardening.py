"""A broken sink or a failing I/O loop never hangs the scheduler process (issue 17).

The scheduler runs in a child process of this test (only it is killed, if at all) with
a sink that answers every write with a malformed outcome: each is a failed write,
retried, nothing acked. Then a callback on its I/O loop raises: the process must end
(before the fix it hung on its writer threads, retrying for ever) and the broker must
hold every message again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fairway.kernel import topology
from tests.harness import Pipeline, wait_for
from tests.integration.test_scheduler_pool import _fill

CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from fairway.domain.tenant_watch import RegistryTenants
    from fairway.kernel.settings import Settings
    from fairway.storage import mongo
    from scheduler import metrics
    from scheduler.service import Scheduler
    from scheduler.sink import WriteOutcome

    class BrokenSink:
        def write(self, bodies):
            return WriteOutcome(stored_each=[1])  # no duplicates list: malformed
        def close(self):
            pass

    settings = Settings.from_env()
    scheduler = Scheduler(settings, BrokenSink(), RegistryTenants(mongo.connect(settings)))

    def boom():
        raise RuntimeError("a bug in an I/O loop callback")

    def watch():
        while metrics.SCHED_MALFORMED_OUTCOMES._value.get() < 2:
            time.sleep(0.05)
        print("malformed outcomes retried", flush=True)
        scheduler.call_soon(boom)

    threading.Thread(target=watch, daemon=True).start()
    scheduler.run()
    """
)


def test_malformed_outcomes_are_retried_and_a_failed_io_loop_ends_the_process(
    pipeline: Pipeline,
) -> None:
    pipeline.tenant("acme")
    _fill(pipeline, "acme", 30)
    queue = topology.tenant_queue_name("acme")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env={**pipeline.settings.environ(), "PYTHONPATH": "."},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()  # only the process this test started
        out, err = child.communicate()
        hung = f"the scheduler hung after its I/O loop failed:\n{err[-3000:]}"
        raise AssertionError(hung) from None
    assert "malformed outcomes retried" in out, err[-3000:]
    assert child.returncode != 0
    assert "sink returned a malformed outcome" in err
    assert "a bug in an I/O loop callback" in err
    # Nothing was acked: the broker holds every message again.
    wait_for(lambda: pipeline.depth(queue) == 30, 30, "every message back in its queue")
