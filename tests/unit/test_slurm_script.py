"""scripts/slurm/pretrain.sbatch builds the command of docs/scaling-out.md "Commands" on every node,
and gives each node's task the job's CPUs (docs/scaling-out.md "SLURM and CPUs").

SLURM is not here, so ``srun`` and ``scontrol`` are stand-ins on PATH that record what they were
asked; the script itself runs under bash as sbatch would run it on the first node, with the
variables sbatch sets (``SLURM_CPUS_PER_TASK`` from its ``--cpus-per-task``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "pretrain.sbatch"


def _run(tmp_path: Path, *args: str, check: bool = True, **env: str | None) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun.args"
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a017\\ngpu-a018\\n'\n")
    (bin_dir / "srun").write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {shlex.quote(str(record))}\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a[017-018]",
               "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "32", **env}
    environ = {key: value for key, value in environ.items() if value is not None}
    result = subprocess.run(["bash", str(SCRIPT), *args], env=environ, cwd=tmp_path, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
        return record.read_text().splitlines()
    assert result.returncode != 0 and not record.exists(), "srun must not start"
    return result.stderr.strip().splitlines()


def test_every_node_gets_the_same_command_with_the_first_node_as_endpoint(tmp_path: Path) -> None:
    args = _run(tmp_path, "--runner", "ThreadRunner")
    assert args[:3] == ["--kill-on-bad-exit=1", "--cpus-per-task=32", "kedro"]
    params = args[args.index("--params") + 1]
    assert params == "trainer.nnodes=2,trainer.nproc=8,trainer.rdzv_endpoint=gpu-a017:29400"
    assert args[-2:] == ["--runner", "ThreadRunner"] and args.count("--params") == 1


def test_more_parameters_join_the_one_params_option(tmp_path: Path) -> None:
    """kedro run takes --params once: a second one would silently drop the trainer settings."""
    args = _run(tmp_path, MASKDM_PARAMS="pretrain.steps=100000,pretrain.lr=0.0001", GPUS_PER_NODE="4",
                RDZV_PORT="29555", MASKDM_ENV="celebahq256")
    assert args.count("--params") == 1
    assert args[args.index("--params") + 1] == ("trainer.nnodes=2,trainer.nproc=4,trainer.rdzv_endpoint=gpu-a017:29555,"
                                                "pretrain.steps=100000,pretrain.lr=0.0001")
    assert args[args.index("--env") + 1] == "celebahq256"


def test_srun_gives_each_node_the_cpus_the_job_asked_for(tmp_path: Path) -> None:
    """Slurm 22.05 to 23.02 do not pass the batch job's --cpus-per-task on to srun (each node's
    launcher and its workers then share one CPU): the script names it to srun, before the command,
    taking the count sbatch was given (here on its command line: 16, not the script's 32)."""
    args = _run(tmp_path, SLURM_CPUS_PER_TASK="16")
    assert args.index("--cpus-per-task=16") < args.index("kedro") and args.count("--cpus-per-task=16") == 1


def test_a_job_without_cpus_per_task_stops_before_srun_in_one_line(tmp_path: Path) -> None:
    lines = _run(tmp_path, check=False, SLURM_CPUS_PER_TASK=None)
    assert len(lines) == 1 and "SLURM_CPUS_PER_TASK" in lines[0] and "--cpus-per-task" in lines[0], lines
