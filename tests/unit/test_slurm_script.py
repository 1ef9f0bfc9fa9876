"""scripts/slurm/pretrain.sbatch builds the command of docs/scaling-out.md "Commands" on every node.

SLURM is not here, so ``srun`` and ``scontrol`` are stand-ins on PATH that record what they were
asked; the script itself runs under bash as sbatch would run it on the first node.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "pretrain.sbatch"


def _run(tmp_path: Path, *args: str, **env: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun.args"
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a017\\ngpu-a018\\n'\n")
    (bin_dir / "srun").write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {shlex.quote(str(record))}\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a[017-018]",
               "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", **env}
    subprocess.run(["bash", str(SCRIPT), *args], env=environ, check=True, cwd=tmp_path)
    return record.read_text().splitlines()


def test_every_node_gets_the_same_command_with_the_first_node_as_endpoint(tmp_path: Path) -> None:
    args = _run(tmp_path, "--runner", "ThreadRunner")
    assert args[:2] == ["--kill-on-bad-exit=1", "kedro"]
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
