"""The training engine: one stage (pre-training, fine-tuning or baseline) from images to state.

Optimisation follows METHOD.md section 4: AdamW on all parameters, linear warm-up then a
constant LR, optional clipping by global norm, an EMA updated every step, ``batch_size`` the
global batch. What the official code lacked and this adds:

- every random draw comes from seeded generators that live in the checkpoint
  (training/streams.py), so an interrupted run resumes to the same weights (bitwise on CPU);
- per-rank samples differ (METHOD.md section 8 item 5) while the result does not depend on
  ``nproc``: draws are made for the global batch and each rank keeps its slice;
- time accounting that reviewers found missing: training wall time without evaluation or
  checkpoint I/O, images and tokens seen (masked stages see fewer tokens per image), and
  token-blocks (patch tokens summed over the blocks, ``UViT.token_blocks``), which charges the
  dense blocks of dense-first masking for every token they see; after an elastic restart of the
  worker group they also count the steps the lost attempt trained past its last checkpoint, and
  ``restarts``, ``steps_redone`` and ``restart_time_s`` say what the restarts cost
  (training/restarts.py).

``TrainProcess.train`` returns a ``maskdm-checkpoint/1`` dict (fileio.py); training/run.py is
the entry that checks a job and starts one or several processes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from maskdm_pipeline import devices
from maskdm_pipeline.fileio import CHECKPOINT_FORMAT, save_checkpoint, to_cpu, to_plain
from maskdm_pipeline.training import process
from maskdm_pipeline.training.builders import (
    build_loss,
    load_init_weights,
    warmup_lr,
)
from maskdm_pipeline.training.ema import build_ema, ema_state_dict, load_ema_state_dict
from maskdm_pipeline.training.job import NonFiniteLossError, TrainingInterrupted, TrainJob
from maskdm_pipeline.training.multinode import NodeGroup
from maskdm_pipeline.training.restarts import Attempts
from maskdm_pipeline.training.streams import TrainingStreams

__all__ = ["TrainProcess"]

logger = logging.getLogger(__name__)


class TrainProcess:
    """All live objects of one training process (rank ``rank`` of ``world_size``) and the step
    that advances them; ``TrainProcess(job, ...).train()`` runs the loop and returns the state
    on rank 0 (None elsewhere). With ``world_size > 1`` the caller has initialised the default
    process group (training/distributed.py); ``attempts``, given to each node's first process,
    records its progress for the accounting of a restarted worker group (training/restarts.py).
    """

    def __init__(self, job: TrainJob, *, rank: int, world_size: int, local_rank: int,
                 nodes: NodeGroup | None = None, attempts: Attempts | None = None) -> None:
        stage, trainer = job.stage, job.trainer
        self.images = process.host_images(job.images)  # shards: each process maps them itself
        self.rank, self.world_size = rank, world_size
        self.stage, self.trainer, self.name = stage, trainer, job.name
        self.eval_fn = job.eval_fn
        self.path = None if job.checkpoint_path is None else Path(job.checkpoint_path)
        self.config = job.config()
        self.device = process.select_device(trainer, local_rank)
        # Several nodes: rank 0's state reaches every node through ``nodes`` (training/multinode.py),
        # and each node's first process reports progress, so every node's log shows its steps.
        self.nodes = nodes
        self.reports = rank == 0 or (nodes is not None and nodes.leader)
        self.show_bar = self.reports and (sys.stderr.isatty() if job.progress is None else job.progress)

        # Seed the initialisation without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage.seed)
            self.model = job.model.build()
        self.model.to(self.device).train()
        if job.init_weights is not None and job.resume_state is None:
            load_init_weights(self.model, job.init_weights, job.name)
        # The EMA starts from the (possibly fine-tuning) start weights (METHOD.md section 4).
        self.ema = build_ema(self.model, stage)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=stage.lr,
                                           betas=stage.betas, weight_decay=stage.weight_decay)
        self.autocast = devices.autocast(self.device, trainer.precision)
        # fp16 has too little range for small gradients; bf16 has fp32's range and needs no scaler.
        self.scaler = torch.amp.GradScaler(self.device.type) if trainer.precision == "fp16" else None
        self.loss_fn, num_timesteps = build_loss(job.diffusion, job.mask, self.device)
        # Gradients and AdamW's two moments are allocated at the first step: keep room for them.
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        resident = process.resident_images(self.images, self.device, reserved=3 * weights)
        if resident is not None:
            self.images = resident
        if self.reports:
            logger.info("%s: training on %s", self.name, self._where(resident is not None))

        grid = int(self.model.grid_size)
        self.tokens_per_image = grid * grid
        masked = job.mask.count(grid, job.name) if job.masked else 0
        self.visible_per_image = self.tokens_per_image - masked
        # Also checks the dense blocks against the depth, before any step.
        self.token_blocks_per_image = self.model.token_blocks(
            self.visible_per_image, job.mask.dense_blocks if job.masked else 0)
        self.streams = TrainingStreams(
            num_images=self.images.shape[0], seed=stage.seed, num_timesteps=num_timesteps,
            image_shape=tuple(self.images.shape[1:]), device=self.device,
            # Checked against the grid here, once; the sampler trusts its settings every step.
            mask_sampler=job.mask.sampler(grid, job.name) if job.masked else None,
            hflip=stage.hflip,
            labels=None if job.labels is None else torch.as_tensor(job.labels, dtype=torch.long),
            num_classes=int(self.model.num_classes), label_dropout=stage.label_dropout,
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.stats = {"wall_time_s": 0.0, "eval_time_s": 0.0, "checkpoint_time_s": 0.0,
                      "images_seen": 0, "tokens_seen": 0, "token_blocks_seen": 0,
                      "restarts": 0, "steps_redone": 0, "restart_time_s": 0.0}
        if job.resume_state is not None:
            self._resume(job.resume_state)
        self.attempts = attempts
        if attempts is not None:  # a restarted attempt counts what the lost one trained
            self.stats = attempts.begin(self.step, self.stats)

        self.train_model: nn.Module = self.model
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if trainer.compile:
            self.train_model = torch.compile(self.train_model)
        self._last_saved_step: int | None = None

    def _resume(self, state: Mapping[str, Any]) -> None:
        # Private copies first: with trainer.nproc > 1 the job reaches each worker through
        # torch.multiprocessing, which shares tensors between processes instead of copying them,
        # and the optimizer's load_state_dict keeps its step counts and moments as given and then
        # updates them in place: every rank would advance the same Adam state (it moved twice per
        # step with two ranks, so a resumed two-process run drifted from an uninterrupted one).
        state = to_cpu(state)
        self.model.load_state_dict(state["model"])
        load_ema_state_dict(self.ema, state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the config, not the old file, is the truth
            group["betas"], group["weight_decay"] = self.stage.betas, self.stage.weight_decay
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.streams.load_state_dict(state["rng"], resumed_step=self.step)
        self.history = [dict(h) for h in state.get("history", [])]
        self.evals = [dict(e) for e in state.get("evals", [])]
        saved = dict(state.get("stats", {}))
        # A state saved before token-blocks were counted trained with this recipe all along.
        saved.setdefault("token_blocks_seen", int(saved.get("images_seen", 0)) * self.token_blocks_per_image)
        for key in self.stats:
            self.stats[key] = type(self.stats[key])(saved.get(key, 0))

    # ------------------------------------------------------------------ the step
    def _step(self, stop: process.StopOnSignal) -> tuple[float, bool]:
        """One optimizer step; returns (global mean loss, whether to stop after it)."""
        step = self.step + 1
        lr = warmup_lr(step, self.stage.lr, self.stage.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        draws = self.streams.draw(self.stage.batch_size, self.rank, self.world_size)
        x0 = process.images_to_device(self.images, draws.indices, self.device)  # (b, C, H, W)
        if draws.flip is not None:
            x0 = process.flip_horizontally(x0, draws.flip)
        t = devices.to_device(draws.t, self.device)
        labels = None if draws.labels is None else devices.to_device(draws.labels, self.device)
        with self.autocast:
            if draws.mask is None:
                loss = self.loss_fn(self.train_model, x0, t=t, noise=draws.noise, labels=labels)
            else:  # the mask stays on the CPU: the model takes the visible positions from it
                loss = self.loss_fn(self.train_model, x0, draws.mask, t=t, noise=draws.noise, labels=labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        # One collective carries both values so every rank takes the same decision below.
        loss_value, stop_all = process.reduce_step(loss.detach(), stop.requested, self.world_size)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self._non_finite_message(step, loss_value))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.stage.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.stage.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update()
        self.step = step
        self.stats["images_seen"] += self.stage.batch_size
        self.stats["tokens_seen"] += self.stage.batch_size * self.visible_per_image
        self.stats["token_blocks_seen"] += self.stage.batch_size * self.token_blocks_per_image
        # Alone, a signal that came after the collective still stops after this step; with
        # several ranks only the reduced flag counts, so that all stop at the same step.
        return loss_value, stop_all or (self.world_size == 1 and stop.requested)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any] | None:
        stage = self.stage
        base_wall = self.stats["wall_time_s"]
        excluded = 0.0  # eval and checkpoint seconds of this session
        start = time.perf_counter()

        def elapsed() -> float:
            devices.synchronize(self.device)
            return base_wall + time.perf_counter() - start - excluded

        last_log = (self.step, base_wall)
        losses: list[float] = []
        bar = tqdm(total=stage.steps, initial=self.step, desc=self.name, unit="step",
                   dynamic_ncols=True, disable=not self.show_bar)
        stopped = False
        try:
            with process.StopOnSignal() as stop:
                while self.step < stage.steps and not stopped:
                    loss_value, stopped = self._step(stop)
                    if self.attempts is not None:  # no device sync: the loss's .item() waited for it
                        self.attempts.record(self.step, {**self.stats, "wall_time_s": base_wall
                                                         + time.perf_counter() - start - excluded})
                    losses.append(loss_value)
                    bar.update(1)
                    final = self.step == stage.steps or stopped
                    if self.step % stage.log_every == 0 or final:
                        now = elapsed()
                        self.stats["wall_time_s"] = now
                        images = (self.step - last_log[0]) * stage.batch_size
                        record = {"step": self.step, "loss": sum(losses) / len(losses),
                                  "lr": self.optimizer.param_groups[0]["lr"],
                                  "img_per_s": images / max(now - last_log[1], 1e-9),
                                  "elapsed_s": now}
                        self.history.append(record)
                        self._report(record, bar)
                        last_log, losses = (self.step, now), []
                    if stage.eval_every and self.step % stage.eval_every == 0:
                        excluded += self._evaluate(elapsed())
                    if self.path is not None and not final and stage.checkpoint_every \
                            and self.step % stage.checkpoint_every == 0:
                        self.stats["wall_time_s"] = elapsed()
                        excluded += self._save()
                        if self.reports and not self.show_bar:
                            logger.info("%s step %d/%d: periodic checkpoint saved to %s", self.name,
                                        self.step, stage.steps, self.path)
                self.stats["wall_time_s"] = elapsed()
                # The finished (or interrupted) state goes to the resume file too, although the
                # caller also gets it back: if the caller cannot store it (the catalog's final
                # save fails on a full disk), it is still on disk, and a rerun resumes at the
                # last step and only saves (docs/reliability.md "Disk and folders").
                if self.path is not None:
                    self._save()
        finally:
            bar.close()
        state = self.state() if self.rank == 0 else None
        if self.nodes is not None:  # rank 0's state on every node's first process
            state = self.nodes.share(state, self.step)
        if stopped:
            raise TrainingInterrupted(self._interrupted_message(stop.signal_name),
                                      step=self.step, checkpoint_path=self.path, state=state)
        return state

    def _evaluate(self, now: float) -> float:
        """Run eval_fn on rank 0 and record it; return the seconds it took."""
        if self.eval_fn is None or self.rank != 0:
            return 0.0
        t0 = time.perf_counter()
        with torch.no_grad():
            result = self.eval_fn(self.step, self.ema.ema_model)
        devices.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.stats["eval_time_s"] += seconds
        if result:
            # Our bookkeeping keys win over same-named keys in the eval result.
            plain = to_plain(dict(result))
            self.evals.append({**plain, "step": self.step,
                               "elapsed_s": now, "images_seen": self.stats["images_seen"]})
            # Quality while it trains, not only in the accounting written at the end.
            shown = ", ".join(f"{k} {v:.4g}" for k, v in plain.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool))
            logger.info("%s step %d/%d evaluation: %s (%.1f s)", self.name, self.step,
                        self.stage.steps, shown or "done", seconds)
        return seconds

    def _save(self) -> float:
        """Write the full state atomically (rank 0 only; with several nodes rank 0's state on
        every node, training/multinode.py); return the seconds it took."""
        if self.path is None or (self.rank != 0 and self.nodes is None):
            return 0.0
        t0 = time.perf_counter()
        if self.nodes is not None:
            self.nodes.save(self.state() if self.rank == 0 else None, self.step, self.path)
        else:
            save_checkpoint(self.state(), self.path)
        self._last_saved_step = self.step
        seconds = time.perf_counter() - t0
        self.stats["checkpoint_time_s"] += seconds
        return seconds

    def state(self) -> dict[str, Any]:
        """The full training state as a ``maskdm-checkpoint/1`` dict of CPU copies."""
        wall = self.stats["wall_time_s"]
        stats = {**self.stats, "steps": self.step,
                 "img_per_s": self.stats["images_seen"] / wall if wall > 0 else 0.0,
                 "tokens_per_image": self.tokens_per_image,
                 "visible_tokens_per_image": self.visible_per_image,
                 "token_blocks_per_image": self.token_blocks_per_image,
                 "device": devices.describe(self.device),
                 "precision": self.trainer.precision, "nproc": self.world_size,
                 "epochs": self.streams.epoch}
        return to_cpu({
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "ema": ema_state_dict(self.ema),
            "optimizer": self.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "step": self.step,
            "rng": self.streams.state_dict(),
            "config": self.config,
            "history": self.history,
            "stats": stats,
            "evals": self.evals,
        })

    # ------------------------------------------------------------------ messages
    def _where(self, resident: bool) -> str:
        """Device, precision, compilation and processes; on a GPU, where the images are read."""
        trainer = self.trainer
        where = (f"{devices.describe(self.device)}, {trainer.precision}{', compiled' if trainer.compile else ''}, "
                 f"{self.world_size} process{'es' if self.world_size > 1 else ''}")
        if self.device.type != "cuda":
            return where
        size = f"{self.images.shape[0] * math.prod(self.images.shape[1:]) / 2**30:.2f} GiB"
        if resident:
            return f"{where}; the training images ({size}) stay on the GPU"
        return (f"{where}; the training images ({size}) are gathered on the host and copied per batch (more "
                f"than {process.RESIDENT_FRACTION:.0%} of the GPU's free memory)")

    def _report(self, record: dict[str, Any], bar: Any) -> None:
        if not self.reports:
            return
        if self.show_bar:
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}")
        else:
            logger.info("%s step %d/%d loss %.4f lr %.2e %.0f img/s (%.0f s)", self.name,
                        record["step"], self.stage.steps, record["loss"], record["lr"],
                        record["img_per_s"], record["elapsed_s"])

    def _non_finite_message(self, step: int, value: float) -> str:
        if self._last_saved_step is not None:
            kept = f"the last good checkpoint {self.path} (step {self._last_saved_step}) is kept"
        elif self.path is not None:
            kept = f"nothing was written, so any existing checkpoint at {self.path} is kept"
        else:
            kept = "no checkpoint path was given, nothing was written"
        n = self.name
        return (
            f"{n}: the loss became {value} at step {step}; training stopped and {kept}. "
            f"Usual fixes: lower {n}.lr (now {self.stage.lr:g}), clip gradients "
            f"({n}.grad_clip=1.0, now {self.stage.grad_clip}), a larger {n}.batch_size (now "
            f"{self.stage.batch_size}) or a warm-up ({n}.warmup_steps, now "
            f"{self.stage.warmup_steps}); with fp16 try bf16 or fp32. The paper's appendix "
            "found 90% masking unstable without clipping and large batches (METHOD.md section 7)."
        )

    def _interrupted_message(self, signal_name: str | None) -> str:
        head = f"{self.name}: stopped by {signal_name or 'a signal'} after step {self.step}/" \
               f"{self.stage.steps}"
        if self.path is None:
            return (f"{head}; the job has no checkpoint_path, so nothing was written. "
                    "The state is attached to this exception as .state.")
        return (f"{head}; the full training state is saved in {self.path}. To continue, run the "
                f"job again with resume_state=load_checkpoint({str(self.path)!r}) (the same "
                "configs and images); the result equals an uninterrupted run.")
