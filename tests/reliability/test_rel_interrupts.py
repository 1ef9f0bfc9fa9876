"""Interrupted training, through the real CLI: Ctrl-C (SIGINT), SIGTERM (what schedulers and
`docker stop` send) and `kill -9` on `kedro run --env smoke --pipelines pretrain`, in one process
and in two (`trainer.nproc=2`).

What is proved, in one sequence on one project: SIGINT and SIGTERM save the state after the
current step and exit with 130 / 143 and a one-line message that says where the state is and
how to continue (no traceback); each rerun resumes where the last one stopped; `kill -9` loses
only the steps since the last periodic checkpoint; and the final weights after all of that
equal, bit for bit, those of an uninterrupted run started at the same time in another project.
"""

from __future__ import annotations

import re
import signal

import torch
from conftest import squash

from maskdm_pipeline.fileio import load_checkpoint

STEPS, EVERY = 400, 20
PARAMS = {"pretrain.steps": STEPS, "pretrain.checkpoint_every": EVERY, "pretrain.log_every": 5}
STEP_LINE = r"pretrain step (\d+)/400"


def _wait_for_step(run, at_least: int) -> int:
    """Block until the run has logged a step >= ``at_least``; return that step."""
    match = run.wait_for(STEP_LINE, timeout=240, accept=lambda m: int(m.group(1)) >= at_least)
    return int(match.group(1))


def _assert_clean_stop(code: int, output: str, signame: str, expected_code: int, steps: int = STEPS) -> int:
    text = squash(output)
    assert code == expected_code, f"exit status {code}, expected {expected_code}:\n{output[-3000:]}"
    assert "Traceback" not in output and "╭" not in output, "the user sees a stack trace:\n" + output[-3000:]
    match = re.search(rf"Error: pretrain: stopped by {signame} after step (\d+)/{steps}\. The full training "
                      r"state is saved in data/06_models/pretrained\.resume\.pt; a rerun resumes from it", text)
    assert match, "the message is missing or unclear:\n" + text[-2000:]
    assert "To go on, rerun the same command: what finished is skipped as up to date." in text, text[-2000:]
    return int(match.group(1))


def _same_weights(a: dict, b: dict, steps: int = STEPS) -> None:
    assert a["step"] == b["step"] == steps
    for part in ("model",):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for key, value in a["ema"]["model"].items():
        assert torch.equal(value, b["ema"]["model"][key]), f"ema.{key} differs"
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), f"optimizer {index}.{name}"


def test_sigint_sigterm_and_kill9_then_rerun_equal_an_uninterrupted_run(make_project):
    """SIGINT, then SIGTERM on the resumed run, then kill -9 on the next one, then a last rerun:
    clean exits and messages, bounded loss, and bitwise the weights of an uninterrupted run."""
    reference_project, project = make_project("reference"), make_project("interrupted")
    reference = reference_project.start("--pipelines", "pretrain", params=PARAMS)
    models = project.data / "06_models"
    resume, final = models / "pretrained.resume.pt", models / "pretrained.pt"

    # 1. Ctrl-C after the first periodic checkpoint.
    run = project.start("--pipelines", "pretrain", params=PARAMS)
    _wait_for_step(run, EVERY + 5)
    run.send(signal.SIGINT)
    stopped_at = _assert_clean_stop(*run.finish(), "SIGINT", 130)
    assert load_checkpoint(resume)["step"] == stopped_at > EVERY
    assert not final.exists() and not (project.data / "08_reporting" / "pretrain_history.csv").exists()

    # 2. Rerun: it resumes; SIGTERM once it has passed another periodic checkpoint.
    run = project.start("--pipelines", "pretrain", params=PARAMS)
    run.wait_for(rf"pretrain: resuming from .{{0,300}}?pretrained\.resume\.pt at step {stopped_at}\b")
    _wait_for_step(run, stopped_at + EVERY + 5)
    run.send(signal.SIGTERM)
    terminated_at = _assert_clean_stop(*run.finish(), "SIGTERM", 143)
    assert load_checkpoint(resume)["step"] == terminated_at > stopped_at + EVERY

    # 3. kill -9: no chance to save; only the periodic checkpoints remain.
    run = project.start("--pipelines", "pretrain", params=PARAMS)
    run.wait_for(rf"pretrain: resuming from .{{0,300}}?pretrained\.resume\.pt at step {terminated_at}\b")
    last_logged = _wait_for_step(run, terminated_at + EVERY + 10)
    run.send(signal.SIGKILL)
    code, _ = run.finish()
    assert code == -signal.SIGKILL
    kept = load_checkpoint(resume)["step"]
    assert kept % EVERY == 0 and kept > terminated_at
    # At most the steps since the last periodic checkpoint are lost (one more interval if the
    # kill landed while that checkpoint was being written).
    assert kept >= (last_logged // EVERY) * EVERY - EVERY, (kept, last_logged)

    # 4. The last rerun finishes from there.
    code, output = project.run("--pipelines", "pretrain", params=PARAMS)
    assert code == 0, output[-3000:]
    assert re.search(rf"pretrain: resuming from .{{0,300}}?pretrained\.resume\.pt at step {kept}\b", squash(output))
    assert final.exists() and not resume.exists(), "the resume file should go once the final one is saved"

    code, output = reference.finish()
    assert code == 0, output[-3000:]
    assert "resuming" not in output
    _same_weights(load_checkpoint(final), load_checkpoint(reference_project.data / "06_models" / "pretrained.pt"))


DDP_STEPS, DDP_EVERY = 120, 10
# Every step logged: the history then records each step's loss, a bitwise trace of the run.
DDP = {"trainer.nproc": 2, "pretrain.steps": DDP_STEPS, "pretrain.checkpoint_every": DDP_EVERY,
       "pretrain.log_every": 1}


def _wait_for_ddp_step(run, at_least: int) -> int:
    match = run.wait_for(rf"pretrain step (\d+)/{DDP_STEPS}", timeout=240,
                         accept=lambda m: int(m.group(1)) >= at_least)
    return int(match.group(1))


def _assert_one_message(output: str) -> None:
    """The user reads one error, not elastic's shutdown chatter or a leaked-resource warning."""
    assert squash(output).count("Error: ") == 1, output[-3000:]
    for noise in ("torch/distributed/elastic", "death signal", "forcefully exiting", "leaked semaphore"):
        assert noise not in output, f"{noise!r} in the output:\n{output[-3000:]}"


def test_two_process_run_stops_cleanly_on_sigint_and_sigterm_and_resumes_bitwise(make_project):
    """trainer.nproc=2: the launcher passes SIGINT / SIGTERM on to its workers, which finish the
    step, save once and return, so the command ends at once with the one message of a single
    process (the step, where the state is, how to go on) and exit 130 / 143. The rerun resumes at
    that step, and every step's loss up to the second stop equals, bit for bit, that of an
    uninterrupted two-process run (a loss is computed from the previous step's weights, so a
    resumed optimizer or random stream that differed would show at the next step)."""
    reference_project, project = make_project("reference2"), make_project("interrupted2")
    reference = reference_project.start("--pipelines", "pretrain", params=DDP)
    resume = project.data / "06_models" / "pretrained.resume.pt"

    run = project.start("--pipelines", "pretrain", params=DDP)
    _wait_for_ddp_step(run, DDP_EVERY + 5)
    run.send(signal.SIGINT)
    code, output = run.finish()
    stopped_at = _assert_clean_stop(code, output, "SIGINT", 130, DDP_STEPS)
    _assert_one_message(output)
    assert load_checkpoint(resume)["step"] == stopped_at > DDP_EVERY

    run = project.start("--pipelines", "pretrain", params=DDP)
    run.wait_for(rf"pretrain: resuming from .{{0,300}}?pretrained\.resume\.pt at step {stopped_at}\b")
    _wait_for_ddp_step(run, stopped_at + DDP_EVERY + 5)
    run.send(signal.SIGTERM)
    code, output = run.finish()
    terminated_at = _assert_clean_stop(code, output, "SIGTERM", 143, DDP_STEPS)
    _assert_one_message(output)
    resumed = load_checkpoint(resume)
    assert resumed["step"] == terminated_at > stopped_at + DDP_EVERY and resumed["stats"]["nproc"] == 2

    code, output = reference.finish()
    assert code == 0 and "resuming" not in output, output[-3000:]
    uninterrupted = load_checkpoint(reference_project.data / "06_models" / "pretrained.pt")
    losses = [(h["step"], h["loss"]) for h in resumed["history"]]
    assert [step for step, _ in losses] == list(range(1, terminated_at + 1))
    assert losses == [(h["step"], h["loss"]) for h in uninterrupted["history"] if h["step"] <= terminated_at]
