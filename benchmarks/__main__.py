"""``python -m benchmarks``: the benchmark suite (issue 6), and the table of
benchmarks/README.md "Performance".

    python -m benchmarks --quick                  # about 2 minutes on 2 CPU cores, no kedro run
    python -m benchmarks --quick --e2e            # plus the DAG end to end with --env smoke
    python -m benchmarks                          # full: paper-size batch, N=256, default kedro run
    python -m benchmarks --quick --memory 20000 200000   # plus the memory of 20k and 200k images
    python -m benchmarks --markdown data/08_reporting/benchmarks.json   # print the table only

On a machine other jobs share, pass ``--threads 1``: with more threads than free cores every
parallel op waits for the slowest thread, and the timings swing by several times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import SECTIONS

DEFAULT_JSON = Path("data/08_reporting/benchmarks.json")


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def _fmt_result(target: dict[str, Any] | None) -> str:
    if target is None:
        return "-"
    return {True: "pass", False: "**FAIL**", None: "n/a"}[target["passed"]]


def _fmt_fd(x: float | None) -> str:
    return "fd_clf n/a" if x is None else f"fd_clf {x:.3g}"


def _train_rows(result: dict[str, Any], targets: dict[str, Any]) -> list[list[str]]:
    rows = []
    for preset, rep in result.get("train_step", {}).items():
        c = rep["config"]
        by_ratio = {r["ratio"]: r for r in rep["results"]}
        top = max(by_ratio)
        base, masked = by_ratio.get(0.0), by_ratio[top]
        kind = f"block-{c['block_size']}" if c["kind"] == "block" else c["kind"]
        others = ", ".join(f"{r:.0%}: {_fmt_ratio(v['speedup_vs_unmasked'])}"
                           for r, v in by_ratio.items() if 0 < r < top)
        target = targets.get("train_step_masked90_small64") if preset == "small-64" else None
        rows.append([
            f"Training step, `{preset}` batch {c['batch_size']}, {top:.0%} {kind} masks vs unmasked",
            f"{masked['img_per_s']:.1f} img/s",
            "-" if base is None else f"{base['img_per_s']:.1f} img/s",
            f"{_fmt_ratio(masked['speedup_vs_unmasked'])} ({others})" if others
            else _fmt_ratio(masked["speedup_vs_unmasked"]),
            ">= 5x" if target else "-", _fmt_result(target),
        ])
    return rows


def _sampling_rows(result: dict[str, Any], targets: dict[str, Any]) -> list[list[str]]:
    sampling = result.get("sampling")
    if not sampling:
        return []
    res, ref_key = sampling["results"], sampling["reference"]
    ref = res.get(ref_key)
    rows = []
    for key, r in res.items():
        if key == ref_key or ref is None:
            continue
        target = targets.get("sampler_dpmpp25_vs_ddim250") if key == "dpm++2m-25" else None
        speed = r["speedup_vs_reference"]
        ratio = f"{_fmt_ratio(speed)} faster" if speed >= 1 else f"{_fmt_ratio(1 / speed)} slower"
        if r["fd_clf_ratio_vs_reference"] is not None:
            ratio += f", fd_clf {_fmt_ratio(r['fd_clf_ratio_vs_reference'])}"
        rows.append([
            f"Sampling {sampling['num_samples']} images, {r['label']}",
            f"{r['seconds_median']:.2f} s, {_fmt_fd(r['fd_clf'])}",
            f"{ref['seconds_median']:.2f} s, {_fmt_fd(ref['fd_clf'])} ({ref['label']})",
            ratio, ">= 8x at fd_clf <= 1.2x" if target else "-", _fmt_result(target),
        ])
    return rows


def _fid_rows(result: dict[str, Any], targets: dict[str, Any]) -> list[list[str]]:
    fid, rows = result.get("fid", {}), []
    act, fd = fid.get("activations", {}), fid.get("frechet", {})
    if "img_per_s_median" in act:
        ref_key = next(k for k in act["img_per_s_median"]
                       if k.startswith("pytorch_fid") and not k.endswith("workers0"))
        rows.append([
            f"Inception activations ({act['num_images']} PNGs, 2048-d)",
            f"{act['img_per_s_median']['ours']:.1f} img/s",
            f"{act['img_per_s_median'][ref_key]:.1f} img/s (pytorch-fid `get_activations`)",
            _fmt_ratio(act["speedup_vs_pytorch_fid"]), ">= 1.3x",
            _fmt_result(targets.get("inception_vs_pytorch_fid")),
        ])
    if "speedup" in fd:
        rows.append([
            f"Frechet distance, {fd['dims']}-d",
            f"{fd['seconds_median']['ours']:.2f} s",
            f"{fd['seconds_median']['pytorch_fid']:.2f} s (SciPy `sqrtm`)",
            f"{_fmt_ratio(fd['speedup'])} (values agree to {fd['relative_difference']:.0e})",
            ">= 4x", _fmt_result(targets.get("frechet_vs_scipy_sqrtm")),
        ])
    return rows


def _e2e_row(result: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    e2e = result.get("e2e", {})
    if "stages" not in e2e:
        return ["`kedro run` end to end", "not measured", "-", "-", "<= 600 s, <= 4 GiB", "n/a"]
    ours = f"{e2e['total_wall_s']:.0f} s, peak {e2e['peak_rss_mib'] / 1024:.2f} GiB"
    if not e2e["completed"]:
        ours += f" ({e2e.get('error', 'incomplete')})"
    return [f"{e2e['label']} end to end (7 stages)", ours, "-", "-", "<= 600 s, <= 4 GiB",
            _fmt_result(targets.get("kedro_run_e2e"))]


def _cache_row(result: dict[str, Any]) -> list[str] | None:
    cache = result.get("cache", {})
    if "noop_vs_full" not in cache:
        return None
    noop, full = cache["noop"], cache["forced_full"]
    return [f"{cache['label']} again, every stage up to date (no-op), vs a full run",
            f"{noop['wall_s']:.1f} s ({noop['nodes_run']} nodes run)",
            f"{full['wall_s']:.1f} s (`--params cache.rerun=all`)", f"{cache['noop_vs_full']:.0%} of it", "-", "-"]


def _rates(pair: dict[str, Any], a: str, b: str) -> list[str]:
    """Cells: ours and the reference as img per CPU second and img/s (wall), and both ratios."""
    cpu, wall = pair["img_per_cpu_s"], pair["img_per_wall_s"]
    return [f"{cpu[a]:,.0f} img/CPU-s ({wall[a]:,.0f} img/s)", f"{cpu[b]:,.0f} img/CPU-s ({wall[b]:,.0f} img/s)",
            f"{_fmt_ratio(pair['ratio_cpu'])} (wall: {_fmt_ratio(pair['ratio_wall'])})"]


def _data_rows(result: dict[str, Any], targets: dict[str, Any]) -> list[list[str]]:
    section, rows = result.get("data", {}), []
    if pre := section.get("preprocess"):
        res = pre["results"]
        rows.append([
            f"Preprocessing {pre['num_images']:,} JPEGs ({pre['source_size'][0]}x{pre['source_size'][1]}, "
            f"crop + resize to {pre['resolution']}), 2 workers vs 1",
            f"{res['2']['img_per_s']:,.0f} img/s ({res['2']['cpu_ms_per_image']:.2f} CPU ms/img)",
            f"{res['1']['img_per_s']:,.0f} img/s ({res['1']['cpu_ms_per_image']:.2f} CPU ms/img)",
            f"{_fmt_ratio(res['2']['speedup_vs_1'])}"
            f"{', same bytes' if pre['identical_output'] else ', OUTPUT DIFFERS'}",
            "-", "-"])
    if mm := section.get("mmap_vs_ram"):
        rows.append([
            f"Training from memory-mapped shards vs RAM (`tiny`, {mm['num_images']:,} images "
            f"{'x'.join(map(str, mm['image']))}, batch {mm['batch_size']})", *_rates(mm, "mmap", "ram"),
            ">= 0.95 (CPU)", _fmt_result(targets.get("training_mmap_vs_ram"))])
    if lb := section.get("loop_vs_bare"):
        rows.append([
            f"The pipeline's training loop vs the bare step (quick-start model, batch {lb['batch_size']})",
            *_rates(lb, "loop", "bare"), ">= 0.9 (CPU)", _fmt_result(targets.get("loop_vs_bare_step"))])
    memory = result.get("memory", {})
    sizes = memory.get("sizes", [])
    for name in memory.get("runs", {}).get(str(sizes[0]), {}).get("runs", {}) if sizes else []:
        cells = []
        for n in sizes:
            r = memory["runs"][str(n)]["runs"].get(name, {})
            cells.append(f"{n:,}: {r.get('peak_rss_anon_mib', float('nan')):,.0f} MiB anon "
                         f"({r.get('peak_rss_file_mib', float('nan')):,.0f} file, "
                         f"{r.get('peak_rss_shmem_mib', float('nan')):.1f} shm)")
        ratio = memory.get("ratios", {}).get(name)
        rows.append([f"Peak memory, `{name.replace('_nproc', ' --params trainer.nproc=')}` (64x64 RGB)",
                     "; ".join(cells), "-", "-" if ratio is None else _fmt_ratio(ratio), "<= 1.3, no shm",
                     _fmt_result(targets.get("memory_200k_vs_20k")) if ratio is not None else "-"])
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    """The table of benchmarks/README.md "Performance" (with a caption naming the machine) from a
    suite result."""
    targets = result.get("targets", {})
    rows = [*_train_rows(result, targets), *_sampling_rows(result, targets),
            *_fid_rows(result, targets), *_data_rows(result, targets), _e2e_row(result, targets)]
    rows += [row for row in [_cache_row(result)] if row]
    lines = ["| benchmark | ours | reference | ratio | target | result |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    m = result["machine"]
    where = m.get("gpu") or m.get("cpu", "unknown CPU")
    load = ""
    if m.get("load_average_at_start") and m.get("load_average_at_end"):
        load = (f"; 1-min load average {m['load_average_at_start'][0]:.1f} at start, "
                f"{m['load_average_at_end'][0]:.1f} at end")
    caption = (f"\n`python -m benchmarks{' --quick' if result['mode'] == 'quick' else ''}`, "
               f"{m.get('date', '?')}: {where} ({m.get('logical_cpus', '?')} logical CPUs, "
               f"{m.get('torch_threads', '?')} torch threads), torch {m.get('torch', '?')}{load}. "
               "Medians of repeats after a warm-up; each ratio compares runs in one process.")
    sampling = result.get("sampling", {})
    if sampling.get("quality_reason"):
        caption += f" fd_clf not measured: {sampling['quality_reason']}."
    elif sampling.get("model", {}).get("source") == "checkpoint":
        info = sampling["model"]
        caption += (f" Sampling from `{Path(info['path']).name}` ({info['trained_steps']} steps, "
                    f"{info['img_size']}x{info['img_size']}); fd_clf at N={sampling['num_samples']} "
                    f"(real-data floor {info.get('fd_clf_real_data_floor') or float('nan'):.3g} "
                    f"at N={info.get('fd_clf_real_data_floor_n')}).")
        if info.get("quality_caveat"):
            caption += f" Caveat: {info['quality_caveat']}."
    if result.get("note"):
        caption += f" {result['note']}"
    return "\n".join(lines) + "\n" + caption + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about 2 min on 2 cores")
    parser.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=None,
                        help="run the kedro pipelines end to end (default: on in full mode; "
                             "with --quick it uses --env smoke)")
    parser.add_argument("--e2e-env", default=None, help="kedro env for the end-to-end part")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--markdown", type=Path, metavar="JSON",
                        help="print the Performance table of this result and exit (no run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and BLAS threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where finetuned.pt and the fd_clf files are (default: the project's data/)")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help="pt_inception weights (default: the hub cache, else stand-in weights)")
    parser.add_argument("--note", default=None, help="free text stored with the result, e.g. the load")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                        help="run only these sections (default: all)")
    parser.add_argument("--memory", type=int, nargs="*", metavar="N", default=None,
                        help="peak memory of preprocess and pretrain on N generated 64x64 images per size "
                             "(e.g. 20000 200000; the 200k case takes ~15 min on 2 cores); full mode "
                             "runs 20000, quick mode none")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the suite (or render ``--markdown``); writes ``--json`` and prints the table."""
    args = parse_args(argv)
    if args.markdown is not None:
        print(render_markdown(json.loads(args.markdown.read_text())), end="")
        return 0

    import torch
    from threadpoolctl import threadpool_limits

    from benchmarks import suite

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)
    cfg = suite.SuiteConfig.quick() if args.quick else suite.SuiteConfig.full()
    if args.e2e is not None:
        cfg.e2e = args.e2e
    if args.e2e_env is not None:
        cfg.e2e_env = None if args.e2e_env == "base" else args.e2e_env
    if args.memory is not None:
        cfg.memory_sizes = tuple(sorted(args.memory))
    if args.only:
        cfg.sections = tuple(args.only)
    result = suite.run_suite(cfg, device=args.device, threads=args.threads,
                             data_dir=args.data_dir or suite.PROJECT_ROOT / "data",
                             inception_weights=args.inception_weights, note=args.note,
                             log=lambda msg: print(msg, file=sys.stderr, flush=True))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(render_markdown(result), end="")
    print(f"\nwritten {args.json} ({result['suite_wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
