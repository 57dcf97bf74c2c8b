"""The GIL is released while the engine works; Ctrl-C and a failing progress callback stop a run."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import xaiclip
from conftest import QUICK


def test_other_python_threads_run_during_an_explanation(explainer):
    ct, labels, affine = xaiclip.phantom()
    ticks, stop = [], threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    started = time.perf_counter()
    e = explainer.explain(ct, label=labels, affine=affine, roi="none", masks=400, method="rise",
                          faithfulness_steps=0)
    ended = time.perf_counter()
    stop.set()
    t.join()
    during = [x for x in ticks if started < x < ended]
    # With the GIL held the thread would not tick at all until the call returns.
    assert ended - started > 0.5 and e.forward_passes > 400
    assert len(during) > 100, f"{len(during)} ticks in {ended - started:.1f}s"
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert max(gaps) < 0.25, f"the thread stalled for {max(gaps):.2f}s"


def test_progress_is_reported_and_an_exception_in_it_stops_the_run(explainer):
    ct, labels, affine = xaiclip.phantom()
    seen = []
    explainer.explain(ct, label=labels, affine=affine, progress=lambda d, t: seen.append((d, t)), **QUICK)
    assert seen and all(t == seen[0][1] for _, t in seen) and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    calls = []

    def fail(done, total):
        calls.append(done)
        raise RuntimeError("stop here")

    small = xaiclip.Explainer(device="cpu", batch=8)
    with pytest.raises(RuntimeError, match="stop here"):
        small.explain(ct, label=labels, affine=affine, roi="none", method="rise", masks=4000, faithfulness_steps=0,
                      progress=fail)
    assert len(calls) == 1
    # The explainer is usable again afterwards.
    assert small.explain(ct, label=labels, affine=affine, **QUICK).forward_passes > 1


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_raises_keyboard_interrupt_between_batches():
    script = textwrap.dedent(
        """
        import sys, time, xaiclip
        ct, labels, affine = xaiclip.phantom()
        ex = xaiclip.Explainer(device="cpu", batch=8)
        def started(done, total):
            if done == 8:
                print("running", flush=True)
        t = time.perf_counter()
        try:
            ex.explain(ct, label=labels, affine=affine, roi="none", method="rise", masks=100000,
                       faithfulness_steps=0, progress=started)
        except KeyboardInterrupt:
            print(f"interrupted {time.perf_counter() - t:.2f}", flush=True)
            sys.exit(0)
        print("finished", flush=True)
        sys.exit(1)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "running"
    sent = time.perf_counter()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    waited = time.perf_counter() - sent
    assert p.returncode == 0 and out.startswith("interrupted"), out
    # 100000 masks would take many minutes; one batch of 8 takes well under a second.
    assert waited < 10, f"stopped {waited:.1f}s after Ctrl-C"
