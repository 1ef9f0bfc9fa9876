"""The benchmark suite's ``e2e`` section: every pipeline of ``kedro run`` as its own subprocess in
a throw-away copy of the project, wall time and peak RSS per stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from devkit import kedro_command, make_project_copy

PIPELINES = ("preprocess", "pretrain", "baseline", "finetune", "sample", "evaluate", "report")


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], log: Path,
                 timeout_s: float) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak RSS (MiB, the process and its waited-for children, from
    ``wait4``) and the exit code. Killed after ``timeout_s``."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak_mib = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"wall_s": wall, "peak_rss_mib": peak_mib, "returncode": proc.returncode,
            "user_s": usage.ru_utime, "system_s": usage.ru_stime}


def bench_e2e(env_name: str | None, threads: int | None, timeout_s: float,
              pipelines: tuple[str, ...] = PIPELINES) -> dict[str, Any]:
    """Each pipeline as ``kedro run --pipelines <name>`` in order, in a temporary project copy."""
    base_cmd = kedro_command()
    env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    stages: dict[str, Any] = {}
    result: dict[str, Any] = {
        "env": env_name or "base",
        "label": "default `kedro run`" if env_name is None else f"`kedro run --env {env_name}`",
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "method": "one `kedro run --pipelines <name>` subprocess per stage in a temporary project "
                  "copy; peak RSS from wait4; the total includes Kedro's start-up once per stage",
        "stages": stages,
    }
    with tempfile.TemporaryDirectory(prefix="maskdm-e2e-") as tmp:
        root = make_project_copy(Path(tmp) / "project")
        for name in pipelines:
            cmd = [*base_cmd, "run", "--pipelines", name]
            cmd += ["--env", env_name] if env_name else []
            log = Path(tmp) / f"{name}.log"
            stages[name] = run_measured(cmd, root, env, log, timeout_s)
            if stages[name]["returncode"] != 0:
                stages[name]["log_tail"] = log.read_text(errors="replace")[-3000:]
                result["error"] = f"`{' '.join(cmd[-4:])}` exited with {stages[name]['returncode']}"
                break
    result["total_wall_s"] = sum(s["wall_s"] for s in stages.values())
    result["peak_rss_mib"] = max((s["peak_rss_mib"] for s in stages.values()), default=None)
    result["completed"] = "error" not in result and len(stages) == len(pipelines)
    return result
