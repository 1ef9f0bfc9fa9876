"""The benchmark suite's ``cache`` section: what a ``kedro run`` in which everything is up to date
costs, against a full one (issue 14).

In a throw-away project copy: a full ``kedro run`` (fresh: it also creates the MLflow store), the
same command again (every stage up to date: the no-op), and a full run again with
``--params cache.rerun=all`` (everything recomputed, with the store in place: the fair full run
to compare the no-op with). The no-op's log is checked: one up-to-date line per stage, no node run.
Beside the no-op, what the cache's code identities cost in it (docs/caching.md "What counts as
code"): reading the package and the identities of every part, timed in fresh processes started
in the same copy, between the runs, so that both see the same load.

    python -m benchmarks.cache --env smoke --json docs/benchmarks-cache-smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.e2e import PIPELINES, run_measured
from devkit import kedro_command, load_average, machine_info, make_project_copy

UP_TO_DATE = re.compile(r"maskdm_pipeline\.caching - INFO - (\w+): up to date \(fingerprint [0-9a-f]{6}, ")
CODE_IDENTITY_REPEATS = 3
# Run in the project copy: the package as that `kedro run` imports it, its catalog, and every part
# of the whole pipeline, as the cache's run reads them (caching/session.run_in_parts).
_CODE_IDENTITY = """
import json, sys, time
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.pipeline import Pipeline
bootstrap_project(Path.cwd())
with KedroSession.create(project_path=Path.cwd(), env=sys.argv[1] or None) as session:
    catalog = session.load_context().catalog
    from maskdm_pipeline import codegraph
    from maskdm_pipeline.caching.judge import Judge
    from maskdm_pipeline.caching.units import split_parts, stage_pipelines, stages_by_node
    stages = stage_pipelines()
    persistent = lambda name: name in catalog and not getattr(catalog.get(name), "_EPHEMERAL", False)
    parts = split_parts(sum(stages.values(), Pipeline([])), persistent, stages_by_node(stages))
    start = time.perf_counter()
    modules = codegraph.installed()
    read = time.perf_counter() - start
    judge = Judge(catalog, {}, {})
    for part in parts:
        judge.code(part)
    print(json.dumps({"files": len(modules), "parts": len(parts), "read_s": read,
                      "total_s": time.perf_counter() - start}))
"""


def code_identity_cost(root: Path, env_name: str | None, env: dict[str, str]) -> dict[str, Any]:
    """Seconds to read the package and compute the code identity of every part, in a fresh process
    (as each ``kedro run`` does), Kedro's start-up not counted; :data:`CODE_IDENTITY_REPEATS` times."""
    runs = []
    for _ in range(CODE_IDENTITY_REPEATS):
        out = subprocess.run([sys.executable, "-c", _CODE_IDENTITY, env_name or ""], cwd=root, env=env,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            return {"error": out.stderr[-2000:]}
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"runs": runs, "median_total_s": statistics.median(r["total_s"] for r in runs)}


def bench_cache(env_name: str | None, threads: int | None, timeout_s: float) -> dict[str, Any]:
    """Wall time and peak RSS of a full ``kedro run``, the same command as a no-op, and a forced
    full rerun; ``noop_vs_full`` is the no-op's share of the forced full run's wall time."""
    command = kedro_command() + ["run"] + (["--env", env_name] if env_name else [])
    env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    result: dict[str, Any] = {
        "env": env_name or "base",
        "label": "`kedro run`" if env_name is None else f"`kedro run --env {env_name}`",
        "method": "one project copy: a full run (fresh, creates the MLflow store), the same command "
                  "again (everything up to date), then a full rerun forced with --params cache.rerun=all; "
                  "wall time and peak RSS from wait4, Kedro's start-up included in each",
        "load_average_at_start": load_average(),
    }
    runs = {"first_full": [], "noop": [], "forced_full": ["--params", "cache.rerun=all"]}
    with tempfile.TemporaryDirectory(prefix="maskdm-cache-") as tmp:
        root = make_project_copy(Path(tmp) / "project")
        for name, extra in runs.items():
            log = Path(tmp) / f"{name}.log"
            result[name] = run_measured(command + extra, root, env, log, timeout_s)
            text = log.read_text(errors="replace")
            if result[name]["returncode"] != 0:
                result["error"] = f"{name}: exit status {result[name]['returncode']}"
                result[name]["log_tail"] = text[-3000:]
                break
            if name == "noop":
                result["noop"]["stages_up_to_date"] = sorted(set(UP_TO_DATE.findall(text)))
                result["noop"]["nodes_run"] = text.count("Running node:")
                result["code_identity"] = code_identity_cost(root, env_name, env)
    result["load_average_at_end"] = load_average()
    completed = "error" not in result
    noop = result.get("noop", {})
    result["completed"] = (completed and noop.get("nodes_run") == 0
                           and noop.get("stages_up_to_date") == sorted(PIPELINES))
    if completed:
        result["noop_vs_full"] = result["noop"]["wall_s"] / result["forced_full"]["wall_s"]
        if "median_total_s" in result["code_identity"]:
            result["code_identity_vs_noop"] = result["code_identity"]["median_total_s"] / result["noop"]["wall_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="smoke", help="kedro env (`base`: the default run); default smoke")
    parser.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of the kedro runs")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per kedro run")
    parser.add_argument("--json", type=Path, default=None, help="write the result here too")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), **bench_cache(None if args.env == "base" else args.env, args.threads,
                                                      args.timeout)}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
