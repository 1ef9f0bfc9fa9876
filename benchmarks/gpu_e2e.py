"""``python -m benchmarks.gpu_e2e``: the pipeline end to end on a GPU, as a user runs it.

In order, each in its own subprocess, with its log kept:

1. the GPU tests, ``pytest -m gpu tests/unit/test_gpu.py`` (a bf16 step against fp32, a
   checkpoint trained on CUDA loaded where CUDA is hidden, fd_clf of samples drawn on CUDA
   against the same samples drawn on the CPU);
2. ``kedro run --env smoke --params trainer.device=cuda`` in a fresh project copy: exit status
   0, and every stage that computes must log the device it used (``DEVICE_LINES``);
3. the default quick start, ``kedro run`` (``trainer.device: auto``) in another fresh copy: its
   wall time and fd_clf beside the CPU figures of the README (``CPU_QUICK_START``); it gets the
   time the budget has left and is stopped, and said so, when that runs out.

Without mlflow or kedro-viz (the GPU machine has neither) each run says in one line that it is
not tracked, and goes on. ``--dry-run`` runs 2 alone, on the CPU with ``--env smoke`` as it is,
mlflow and kedro-viz hidden from the runs as on the GPU machine; the test suite does, so the
script cannot rot. Nothing is written under docs/: the summary goes to ``--out``.

    python -m benchmarks.gpu_e2e --out $OUT              # on the GPU machine
    python -m benchmarks.gpu_e2e --dry-run --out /tmp/e2e
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devkit import PROJECT_ROOT, make_project_copy

SCHEMA = "maskdm-gpu-e2e/1"
# Each stage that computes, and the line that names its device (report only writes files).
DEVICE_LINES = {
    "preprocess": r"fd_clf classifier: .*\(trained on (?P<device>cpu|cuda)",
    "pretrain": r"pretrain: training on (?P<device>cpu|cuda)[^;\n]*",
    "baseline": r"baseline: training on (?P<device>cpu|cuda)[^;\n]*",
    "finetune": r"finetune: training on (?P<device>cpu|cuda)[^;\n]*",
    "sample": r"Sampled \d+ images in [^\n]* on (?P<device>cpu|cuda)[^\n]*",
    "evaluate": r"Scoring \d+ samples: fd_clf features on cpu, (?P<device>[^\n]*)",
}
UNTRACKED = "MLflow cannot be imported"
# The default `kedro run` on the CPU, as the README's quick start reports it: one run on a quiet
# 2-core VM, 2026-11-25, torch 2.14.1.
CPU_QUICK_START = {"date": "2026-11-25", "wall_s": 377.0, "maskdm_fd_clf": 20.09, "baseline_fd_clf": 18.37,
                   "real_floor_fd_clf": 4.41, "machine": "2-core CPU VM, quiet",
                   "source": "README.md, 'How long, and what came out'"}
HIDE = '''import importlib.metadata as metadata
import sys

HIDDEN = ("mlflow", "kedro_viz")  # not installed on the GPU machine: hidden here too


class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


_distributions = metadata.distributions


def _installed(**kwargs):
    # Their distributions too, so that no entry point of theirs (kedro-viz's hook) is loaded.
    for dist in _distributions(**kwargs):
        name = (dist.metadata["Name"] or "").lower().replace("-", "_")
        if not name.startswith(HIDDEN):
            yield dist


sys.meta_path.insert(0, _Hidden())
metadata.distributions = _installed
'''


def run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd``, its output into ``log``; exit status, wall seconds, whether it timed out."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code, timed_out = proc.wait(timeout=max(timeout, 1)), False
        except subprocess.TimeoutExpired:
            proc.kill()
            code, timed_out = proc.wait(), True
    return {"command": " ".join(cmd), "returncode": code, "wall_s": time.perf_counter() - start,
            "timed_out": timed_out, "log": log.name}


def device_lines(text: str) -> dict[str, Any]:
    """Per stage, the lines that name its device (None: the stage logged none)."""
    found = {}
    for stage, pattern in DEVICE_LINES.items():
        lines = [m.group(0) for m in re.finditer(pattern, text)]
        found[stage] = lines or None
    return found


def kedro_run(name: str, args: list[str], out: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """``kedro run <args>`` in a fresh project copy; the run's result, device lines and metrics."""
    with tempfile.TemporaryDirectory(prefix=f"maskdm-{name}-") as tmp:
        root = make_project_copy(Path(tmp) / "project")
        result = run_logged([sys.executable, "-m", "kedro", "run", *args], root, env, out / f"{name}.log", timeout)
        text = (out / f"{name}.log").read_text(errors="replace")
        result["devices"] = device_lines(text)
        result["every_stage_logged_its_device"] = all(result["devices"].values())
        result["untracked_line"] = next((line for line in text.splitlines() if UNTRACKED in line), None)
        metrics = root / "data" / "08_reporting" / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            result["fd_clf"] = {"maskdm": m["maskdm"].get("fd_clf"), "baseline": m["baseline"].get("fd_clf"),
                                "real_floor": m["real_floor"].get("fd_clf"), "n": m["maskdm"].get("fd_clf_n")}
            result["training_wall_s"] = {s: v.get("wall_time_s") for s, v in m.get("stages", {}).items()}
    return result


def environment(hide: Path | None) -> dict[str, str]:
    env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    if hide is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hide), env.get("PYTHONPATH")]))
    return env


PARTS = ("tests", "smoke", "quickstart")


def run(out: Path, dry_run: bool, budget_s: float, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"schema": SCHEMA, "dry_run": dry_run}
    with tempfile.TemporaryDirectory() as tmp:
        hide = None
        if dry_run:  # as on the GPU machine, where neither is installed
            hide = Path(tmp)
            (hide / "sitecustomize.py").write_text(HIDE)
        env = environment(hide)
        if dry_run:
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the tiny smoke models on shared cores
        if dry_run:  # without a GPU they skip, as in every run of the suite, which collects them
            report["gpu_tests"] = {"skipped": "dry run (no GPU: the test suite itself collects and skips them)"}
        elif "tests" not in parts:
            report["gpu_tests"] = {"skipped": "not asked for (--parts)"}
        else:
            # In this process (addopts emptied: no pytest-xdist workers for one card and five tests).
            tests = run_logged([sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "gpu", "-p", "no:cacheprovider",
                                "-q", "-rs", "tests/unit/test_gpu.py"], PROJECT_ROOT, env, out / "pytest-gpu.log", 120)
            log = (out / "pytest-gpu.log").read_text(errors="replace").strip().splitlines()
            tests["summary"] = log[-1] if log else ""
            report["gpu_tests"] = tests
        smoke_args = ["--env", "smoke"] + ([] if dry_run else ["--params", "trainer.device=cuda"])
        # On the GPU a smoke run takes well under a minute; a dry run on busy shared cores, minutes.
        report["smoke"] = (kedro_run("smoke", smoke_args, out, env, 540 if dry_run else 150) if "smoke" in parts
                           else {"skipped": "not asked for (--parts)"})
        left = budget_s - (time.perf_counter() - started)
        if dry_run:
            report["quick_start"] = {"skipped": "dry run (the default run takes minutes on a CPU)"}
        elif "quickstart" not in parts:
            report["quick_start"] = {"skipped": "not asked for (--parts)"}
        else:
            report["quick_start"] = kedro_run("quickstart", [], out, env, left - 5)
    report["quick_start"]["cpu_reference"] = CPU_QUICK_START
    report["elapsed_s"] = time.perf_counter() - started
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """What failed: a test, a run's exit status, a stage that did not name its device."""
    found = []
    if report["gpu_tests"].get("returncode", 0) != 0:
        found.append(f"gpu tests: {report['gpu_tests']['summary']}")
    for name in ("smoke", "quick_start"):
        run_ = report[name]
        if "skipped" in run_:
            continue
        if run_["returncode"] != 0:
            found.append(f"{name}: exit status {run_['returncode']}" + (" (timed out)" if run_["timed_out"] else ""))
        missing = [stage for stage, lines in run_["devices"].items() if not lines]
        if missing:
            found.append(f"{name}: no device line from {', '.join(missing)}")
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the summary and the logs")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: the smoke run alone")
    parser.add_argument("--budget-s", type=float, default=200.0, help="seconds for all three; the quick start gets "
                        "what is left")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to run (e.g. --parts quickstart --budget-s 230, to rerun one that ran out of time)")
    args = parser.parse_args(argv)
    docs = (PROJECT_ROOT / "docs").resolve()
    if docs == args.out.resolve() or docs in args.out.resolve().parents:
        parser.error("the end-to-end check writes its logs to --out, never under docs/")
    report = run(args.out, args.dry_run, args.budget_s, tuple(args.parts))
    report["problems"] = problems(report)
    (args.out / "gpu-e2e.json").write_text(json.dumps(report, indent=2))
    summary = {k: report[k].get("returncode", report[k].get("skipped")) for k in ("gpu_tests", "smoke", "quick_start")}
    print(json.dumps({"exit_status": summary, "problems": report["problems"],
                      "quick_start_fd_clf": report["quick_start"].get("fd_clf")}, indent=1))
    if report["problems"]:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
