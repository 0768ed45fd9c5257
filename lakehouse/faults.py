"""Crash points for the fault-injection tests (issue 13).

``FLD_CRASH_AT=<name>`` makes a job kill itself, and the processes it started (the Spark JVM and
its Python workers), with SIGKILL when it reaches the crash point of that name: a test can stop a
job exactly at a stage boundary, where a kill from outside lands wherever the job happens to be.
Unset, a crash point costs one environment lookup.  The points are listed in ``CRASH_POINTS``.
"""
from __future__ import annotations

import os
import signal

CRASH_POINTS = {
    "landing:appended": "landing_manifest holds the landing batch; its checkpoint commit is not written",
    "ingest:bronze": "bronze_images holds the fetch batch; labels, quarantine and log are not written",
    "ingest:logged": "all four appends of the fetch batch are in; its checkpoint commit is not written",
    "round:annotated": "annotation_errors replaced; silver not yet",
    "round:silver": "silver and filter_log replaced; the gate has not run",
    "round:gated": "the gate's results are recorded; gold not yet published",
    "round:published": "gold holds the round; its rounds row is not written",
}


def crash_point(name: str) -> None:
    if name not in CRASH_POINTS:
        raise KeyError(f"unknown crash point {name!r}")
    if os.environ.get("FLD_CRASH_AT") != name:
        return
    import psutil

    print(f"[fault] FLD_CRASH_AT={name}: killing this job ({CRASH_POINTS[name]})", flush=True)
    me = psutil.Process()
    for child in me.children(recursive=True):
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    os.kill(os.getpid(), signal.SIGKILL)
