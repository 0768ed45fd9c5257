"""A Spark standalone cluster on loopback (issue 10, item 6): a master and ``--workers`` workers, each its own
JVM with its own executor processes, then one command run against it with ``FLD_SPARK_MASTER`` set, then
the cluster stopped (also on failure or Ctrl-C).

    .venv/bin/python bench/standalone.py -- .venv/bin/python bench/scale.py --points 1000 --stages ingest,round

Executors run in the workers' own directories (``<home>/standalone/work``), so a relative path, a file or a
module only the driver has fails here as it would on a real cluster.  Logs: ``<home>/standalone/logs``.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _wait_port(port: int, timeout: float = 90.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s (see the cluster logs)")


def _registered_workers(log: Path) -> int:
    return log.read_text(errors="replace").count("Registering worker") if log.exists() else 0


def start(base: Path, workers: int, cores: int, memory: str, port: int = 7077) -> tuple[str, list]:
    """(master URL, processes) of a running cluster whose workers have all registered."""
    (base / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(Path(spark_class()).parents[1]))
    procs = []

    def launch(name, *args):
        log = open(base / "logs" / f"{name}.log", "w")
        procs.append(subprocess.Popen([spark_class(), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
           "--webui-port", str(port + 1))
    _wait_port(port)
    url = f"spark://127.0.0.1:{port}"
    for i in range(workers):
        work = base / "work" / f"worker-{i}"
        work.mkdir(parents=True, exist_ok=True)
        launch(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
               "--cores", str(cores), "--memory", memory, "--work-dir", str(work), "--webui-port", str(port + 2 + i))
    t0 = time.time()
    while _registered_workers(base / "logs" / "master.log") < workers:
        if time.time() - t0 > 120:
            stop(procs)
            raise SystemExit(f"{workers} workers did not register with {url} in 120 s; see {base / 'logs'}")
        time.sleep(0.5)
    return url, procs


def stop(procs) -> None:
    for p in reversed(procs):
        try:
            os.killpg(p.pid, 15)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cores", type=int, default=1, help="cores per worker")
    p.add_argument("--memory", default="4g", help="memory per worker (executors get FLD_SPARK_EXECUTOR_MEMORY)")
    p.add_argument("--base", default=None, help="cluster directory (default: $FLD_HOME/standalone)")
    p.add_argument("--port", type=int, default=7077)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run against the cluster")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command: give it after --")
    base = Path(args.base or Path(os.environ.get("FLD_HOME", "fld_home")) / "standalone").absolute()
    url, procs = start(base, args.workers, args.cores, args.memory, args.port)
    print(f"[standalone] {url}: {args.workers} workers x {args.cores} cores, logs in {base / 'logs'}", flush=True)
    try:
        return subprocess.call(cmd, env=dict(os.environ, FLD_SPARK_MASTER=url))
    finally:
        stop(procs)
        print("[standalone] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
