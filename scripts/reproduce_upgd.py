"""Reproduce UPGD's input-permuted MNIST comparison (Elsayed & Mahmood, ICLR 2024): run SGD (bp),
SGDW (l2), S&P (snp), UPGD (upgd) and weight clipping (wclip) on ``ipmnist`` with their final
settings from the official code (the methods' ``ipmnist`` defaults), then print the side-by-side
table of ``plastibench compare``. docs/reproductions.md gives the published numbers and ours.

    scripts/reproduce-upgd                                  # paper: 20 seeds x 1M steps (a GPU)
    scripts/reproduce-upgd --protocol short --seeds 0-4 --device cpu
    scripts/reproduce-upgd --tasks 6 --seeds 0-2 --device cpu   # the first 6 tasks of paper

``--tasks N`` stops each method's run once its ``metrics.csv`` holds N tasks (an interrupt: the run
checkpoints and can be continued by running again without ``--tasks``) and compares the runs'
first N tasks (``compare --at-task N``). Running the script again resumes each run from its
checkpoint (``plastibench run`` reads a finished run instead of recomputing it).
"""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("bp", "l2", "snp", "upgd", "wclip")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "plastibench", *args]


def tasks_done(run_dir: Path) -> int:
    """Tasks whose metric ``metrics.csv`` holds for every seed (0 if none yet)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        return len({row["task_index"] for row in csv.DictReader(f)})


def run_dir_of(out: Path, protocol: str, method: str, since: float) -> Path | None:
    """The run directory ``method`` writes to: the newest of its kind touched since ``since``."""
    dirs = [d for d in (out / "ipmnist" / protocol).glob(f"{method}-*") if d.stat().st_mtime >= since]
    return max(dirs, key=lambda d: d.stat().st_mtime, default=None)


def run_until(args, method: str, n_tasks: int) -> Path:
    """Run ``method`` until its metrics hold ``n_tasks`` tasks (or it finishes); its run directory."""
    started = time.time() - 1
    proc = subprocess.Popen(cli("run", "-m", method, *common(args), "--checkpoint-every", "10"))
    run_dir = None
    while proc.poll() is None:
        time.sleep(5)
        run_dir = run_dir or run_dir_of(args.out, args.protocol, method, started)
        if run_dir is not None and tasks_done(run_dir) >= n_tasks:
            proc.send_signal(signal.SIGINT)  # the run checkpoints (metrics included) and exits
            proc.wait()
    run_dir = run_dir or run_dir_of(args.out, args.protocol, method, started)
    if run_dir is None or tasks_done(run_dir) < n_tasks:
        sys.exit(f"{method}: the run stopped before task {n_tasks} (exit {proc.returncode})")
    return run_dir


def common(args) -> list[str]:
    extra = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    return ["-t", "ipmnist", "-p", args.protocol, "--seeds", args.seeds, "--device", args.device,
            "--out", str(args.out), *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="paper", help="ipmnist protocol: paper, short or smoke")
    parser.add_argument("--seeds", default="0-19", help="seeds, e.g. 0-19 (UPGD ran 20)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--tasks", type=int, help="stop each run after this many tasks and compare those")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-upgd"), help="root of the runs")
    parser.add_argument("--data-dir", type=Path, help="dataset root (holds mnist/)")
    args = parser.parse_args()
    if args.tasks is None:
        subprocess.run(cli("run", "-m", ",".join(METHODS), *common(args)), check=True)
        since = 0.0
        dirs = [run_dir_of(args.out, args.protocol, m, since) for m in METHODS]
        at_task: list[str] = []
    else:
        dirs = [run_until(args, m, args.tasks) for m in METHODS]
        at_task = ["--at-task", str(args.tasks)]
    subprocess.run(cli("compare", *map(str, dirs), "--markdown", *at_task), check=True)


if __name__ == "__main__":
    main()
