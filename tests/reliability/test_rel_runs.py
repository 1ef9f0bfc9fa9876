"""Runs that meet in one project folder, through the real `kedro run` (docs/reliability.md "Two
runs in one project"): a second run while one trains is refused in one line naming the holder and
touches nothing, the first finishes with its own settings; a lock left by a killed run is taken
over with one warning; two nodes of one job in one folder (a shared filesystem) share the lock
and finish, their writes never colliding."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import asdict

from conftest import squash

from maskdm_pipeline.atomic import host_name
from maskdm_pipeline.fileio import load_checkpoint
from maskdm_pipeline.runlock import FOLDER, FORMAT, Holder, _boot_id
from maskdm_pipeline.training.distributed import free_port

STEPS = 200


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant_killed_holder(root, command: str) -> Holder:
    """What a `kill -9` of a run leaves in the lock: its record and its name in the index."""
    holder = Holder(host=host_name(), boot=_boot_id(), pid=_dead_pid(), start="1", command=command, job=None,
                    started="2026-12-01 09:00:00 UTC")
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{holder.name}.json").write_text(json.dumps(asdict(holder)))
    (folder / "holders.json").write_text(json.dumps({"format": FORMAT, "holders": [holder.name]}))
    return holder


def test_a_second_run_is_refused_in_one_line_and_the_first_finishes_untouched(make_project):
    """Run A (lr 0.002) trains; run B (lr 0.001) started meanwhile ends at once with one `Error:`
    line naming A's command and pid, exit status 75, and changes no file under data/ (A is held
    still with SIGSTOP while B runs, so any change would be B's). A, which took over the lock of
    a run killed earlier with one warning, then finishes: its pretrained.pt was trained at its own
    lr only, and the lock is free again."""
    project = make_project()
    killed = _plant_killed_holder(project.root, "kedro run --env smoke --pipelines pretrain")
    params = {"pretrain.steps": STEPS, "pretrain.checkpoint_every": 5, "pretrain.log_every": 1}
    first = project.start("--pipelines", "pretrain", params={**params, "pretrain.lr": 0.002})
    first.wait_for(rf"pretrain step (\d+)/{STEPS}", timeout=240, accept=lambda m: int(m.group(1)) >= 10)
    first.send(signal.SIGSTOP)
    try:
        before = project.snapshot()
        code, output = project.run("--pipelines", "pretrain", params={**params, "pretrain.lr": 0.001})
        after = project.snapshot()
    finally:
        first.send(signal.SIGCONT)
    assert code == 75, output[-3000:]
    assert "Traceback" not in output and "Running node" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and output.rstrip().endswith(errors[0]), output[-3000:]
    assert re.fullmatch(
        r"Error: another run is writing this project: `kedro run --env smoke --pipelines pretrain --params "
        rf"pretrain\.steps={STEPS},\S*pretrain\.lr=0\.002` \(pid {first.proc.pid} on this machine, {host_name()}, "
        r"since [^)]+\) holds the run lock data/\.run-lock\. Two runs in one project would adopt, overwrite or "
        r"delete each other's files, so nothing was run: wait until it ends \(or stop it\), or run in a copy of "
        r"the project\.", errors[0]), errors[0]
    assert after == before

    code, output = first.finish(timeout=300)
    assert code == 0, output[-3000:]
    assert squash(output).count("Took over the run lock") == 1, output[-3000:]
    assert re.search(r"Took over the run lock data/\.run-lock from `kedro run --env smoke --pipelines pretrain` "
                     rf"\(pid {killed.pid} on this machine, {host_name()}, since 2026-12-01 09:00:00 UTC\): that "
                     r"process is gone\.", squash(output)), output[-3000:]
    state = load_checkpoint(project.data / "06_models" / "pretrained.pt")
    assert state["step"] == STEPS and state["config"]["stage"]["lr"] == 0.002
    warm = state["config"]["stage"]["warmup_steps"]
    assert {round(h["lr"], 12) for h in state["history"] if h["step"] > warm} == {0.002}
    assert not [p for p in (project.root / FOLDER).iterdir()], "the lock is given back"


def test_two_nodes_of_one_job_in_one_project_folder_finish(make_project):
    """Two "nodes" (trainer.nnodes=2 on 127.0.0.1, one worker each) started in one project folder,
    as on a shared filesystem: they share the run lock, one of them writes the periodic
    checkpoints there, and both finish with pretrained.pt at the last step; no temporary, resume
    file or lock record is left (before, each node's write removed the other's temporary and both
    stopped with "lost contact with another node")."""
    project = make_project()
    params = {"trainer.nnodes": 2, "trainer.nproc": 1, "trainer.rdzv_endpoint": f"127.0.0.1:{free_port()}",
              "trainer.rdzv_timeout": 120, "pretrain.steps": 40, "pretrain.checkpoint_every": 10,
              "pretrain.log_every": 10}
    nodes = [project.start("--pipelines", "pretrain", params=params) for _ in range(2)]
    outputs = []
    for node in nodes:
        code, output = node.finish(timeout=300)
        assert code == 0, output[-3000:]
        outputs.append(squash(output))
    writers = [text for text in outputs if re.search(r"nodes 0, 1 share the folder \S*06_models; node 0 writes", text)]
    assert len(writers) == 1, outputs[0][-2000:]
    models = project.data / "06_models"
    state = load_checkpoint(models / "pretrained.pt")
    assert state["step"] == 40 and state["stats"]["nproc"] == 2
    assert sorted(p.name for p in models.iterdir() if p.name != ".gitkeep") == [
        "pretrained.pt", "pretrained.pt.fingerprint.json"]
    assert not list(project.data.rglob("*.tmp")) and not [p for p in (project.root / FOLDER).iterdir()]
