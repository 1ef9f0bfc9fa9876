"""Fashion-MNIST at 256 tokens on one GPU: the baseline against MaskDM at 90% masks, three seeds
side by side on one card, in one device call (docs/results.md "Fashion-MNIST at 256 tokens, on a GPU").

Each seed is :mod:`experiments.claim`'s run (a real ``kedro run`` of the whole DAG in its own
project copy) with ``--env fashion32`` (32x32 at patch 2, a 7.7M-parameter U-ViT, bf16) and the
step budgets below, so the results file has claim's schema, each seed naming its device.

    python -m experiments.fashion256 --out experiments/results/fashion-256.json   # on a GPU
    python -m experiments.fashion256 --dry-run --out /tmp/fashion-256.json        # CPU, tiny sizes

The training files are read from ``$FASHION_MNIST_DIR`` (default: Debian's
``/usr/share/datasets/fashion-mnist``). ``--dry-run`` runs the same command on the CPU at tiny
sizes and one seed (the test suite runs it, so the device command cannot rot); its figures mean
nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments import claim

# Global batch 256 on the card; the unmasked stages get the same number of steps, the masked
# pre-training more (a masked step costs about a sixth of an unmasked one at 28 of 256 tokens).
# Sized by arithmetic, not yet by a measurement on the card: the session that runs it first
# checks the step rate (benchmarks/README.md "GPU") and adjusts the steps to end within 5 minutes.
BUDGET = {
    "pretrain.batch_size": 256, "finetune.batch_size": 256, "baseline.batch_size": 256,
    "pretrain.steps": 4000, "finetune.steps": 2000, "baseline.steps": 2000,
    "finetune.eval_every": 250, "baseline.eval_every": 250,
    "finetune.eval_num_samples": 256, "baseline.eval_num_samples": 256,
    "pretrain.checkpoint_every": 0, "finetune.checkpoint_every": 0, "baseline.checkpoint_every": 0,
}
SEEDS = (0, 1, 2)
# The dry run: the CPU, fp32, a model of 2 blocks, a few steps, 16 samples; FID off (no weights).
DRY = {
    "trainer.device": "cpu", "trainer.precision": "fp32",
    "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2, "preprocess.subset": 64,
    "pretrain.batch_size": 8, "finetune.batch_size": 8, "baseline.batch_size": 8,
    "pretrain.steps": 4, "finetune.steps": 4, "baseline.steps": 4,
    "finetune.eval_every": 2, "baseline.eval_every": 2,
    "finetune.eval_num_samples": 8, "baseline.eval_num_samples": 8,
    "pretrain.checkpoint_every": 0, "finetune.checkpoint_every": 0, "baseline.checkpoint_every": 0,
    "evaluate.fd_clf.num_samples": 8, "evaluate.fd_clf.epochs": 1, "evaluate.fid.enabled": False,
    "sample.num_samples": 16, "sample.batch_size": 16, "sample.steps": 4,
}


def command(out: Path, workdir: Path, dry_run: bool = False) -> list[str]:
    """The arguments of :func:`experiments.claim.main` for this experiment."""
    budget, seeds, jobs = (DRY, SEEDS[:1], 1) if dry_run else (BUDGET, SEEDS, len(SEEDS))
    return ["--env", "fashion32", "--scales", "256", "--seeds", *map(str, seeds), "--jobs", str(jobs),
            "--threads", "1" if dry_run else "4", "--workdir", str(workdir), "--out", str(out),
            "--title", "Fashion-MNIST, 256 tokens" + (" (dry run)" if dry_run else ""),
            "--params", ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in budget.items())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the results JSON (the figure goes beside it)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maskdm-fashion256"))
    parser.add_argument("--dry-run", action="store_true", help="the CPU at tiny sizes, one seed")
    args = parser.parse_args(argv)
    claim.main(command(args.out, args.workdir, args.dry_run))


if __name__ == "__main__":
    main()
