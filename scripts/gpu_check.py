"""The prepared GPU check: correctness of the captured step on CUDA, then throughput against the loop baseline.

Run on a bare machine with PyTorch and CUDA (no internet needed): ``scripts/gpu-check`` installs the
project and runs this. Dry run on a CPU: ``scripts/gpu-check --device cpu --quick``. Data are the
tiny generated files of the test suite (``tests/conftest.py``) in the official on-disk formats, sized
so that every ``paper`` network and batch runs (throughput does not depend on which images are used).

Correctness (on --device):
  * seed 2 alone equals seed 2 among seeds 0-7 (scr smoke, CBP replacing units, captured step);
  * the captured run equals the eager run after 2 tasks of each task's smoke protocol (bp, cbp);
  * scr smoke on --device agrees with the CPU.
Throughput: seed-steps/s of bp and cbp, eager and captured, with the loop baseline beside them, at
S = 1, 8, 32, 128 (and 1024 for scr) on scr, pmnist, cimagenet, and S = 1, 4, 16 on icifar100.
Prints a table and writes JSON (--json). Measurements stop when --budget seconds are spent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plastibench.bench import measure, measure_loop  # noqa: E402
from plastibench.engine import Engine  # noqa: E402
from plastibench.registry import METHODS, TASKS  # noqa: E402
from plastibench.results import run_config  # noqa: E402
from tests.conftest import write_tiny_cifar100, write_tiny_imagenet32, write_tiny_mnist  # noqa: E402

ACTIVE_CBP = {"scr": {"replacement_rate": 0.01}, "pmnist": {"replacement_rate": 0.001},
              "cimagenet": {"replacement_rate": 0.05, "maturity_threshold": 4},
              "icifar100": {"replacement_rate": 0.1, "maturity_threshold": 3}}
SEEDS = {"scr": [1, 8, 32, 128, 1024], "pmnist": [1, 8, 32, 128], "cimagenet": [1, 8, 32, 128],
         "icifar100": [1, 4, 16]}
STEPS = {"scr": (2000, 300), "pmnist": (300, 50), "cimagenet": (300, 60), "icifar100": (40, 12)}  # timed, warm-up
QUICK_SEEDS = {"scr": [1, 8], "pmnist": [1, 2], "cimagenet": [1, 2], "icifar100": [1, 2]}
QUICK_STEPS = {"scr": (100, 40), "pmnist": (5, 3), "cimagenet": (4, 2), "icifar100": (2, 1)}


def make_data(root: Path, quick: bool) -> Path:
    data = write_tiny_imagenet32(root, n_classes=4)  # the store goes to root/data
    write_tiny_mnist(data, n_train=1000, n_test=100)
    write_tiny_cifar100(data, train_per_class=8 if quick else 500, test_per_class=2)
    return data


def train(method: str, task: str, seeds: list[int], device: torch.device, capture: str, data: Path, n_tasks: int = 2):
    cls = METHODS.get(method)
    proto = dataclasses.replace(TASKS.get(task).protocol("smoke"), n_tasks=n_tasks)
    hparams = cls.hparams_for(task, ACTIVE_CBP[task] if method == "cbp" else None)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(cls, hparams, TASKS.get(task), proto, seeds, device=device, directory=tmp,
                        config=run_config(method, hparams, proto, seeds),
                        data_dir=data, verify=False, capture=capture)
        engine.run()
    return engine


def max_diff(a: Engine, b: Engine, rows: slice | None = None, other_rows: slice | None = None) -> float:
    worst = 0.0
    for (name, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        if rows is not None:
            x, y = x[rows], y[other_rows]
        worst = max(worst, (x - y).abs().max().item() if x.numel() else 0.0)
    return worst


def correctness(device: torch.device, data: Path, tasks: list[str]) -> list[dict]:
    checks = []
    together = train("cbp", "scr", list(range(8)), device, "auto", data)
    alone = train("cbp", "scr", [2], device, "auto", data)
    checks.append({"check": "seed 2 alone == seed 2 among 0-7 (scr, cbp, captured)",
                   "max_abs_diff": max_diff(together, alone, slice(2, 3), slice(0, 1)), "tolerance": 1e-5})
    for task in tasks:
        for method in ("bp", "cbp"):
            eager = train(method, task, [0, 1, 2], device, "off", data)
            captured = train(method, task, [0, 1, 2], device, "auto", data)
            checks.append({"check": f"captured == eager after 2 smoke tasks ({task}, {method}; "
                                    f"captured mode {captured.stepper.mode})",
                           "max_abs_diff": max_diff(eager, captured), "tolerance": 1e-4})
    here = train("bp", "scr", [0, 1, 2], device, "auto", data, n_tasks=4)
    cpu = train("bp", "scr", [0, 1, 2], torch.device("cpu"), "off", data, n_tasks=4)
    checks.append({"check": f"scr smoke on {device} == on cpu", "max_abs_diff": max_diff(here, cpu),
                   "tolerance": 1e-4})
    for c in checks:
        c["ok"] = c["max_abs_diff"] <= c["tolerance"]
    return checks


def throughput(device: torch.device, data: Path, tasks: list[str], quick: bool, deadline: float) -> list[dict]:
    rows = []
    for task in tasks:
        protocol = "smoke" if quick else "paper"
        steps, warmup = (QUICK_STEPS if quick else STEPS)[task]
        for method in ("bp", "cbp"):
            for n in (QUICK_SEEDS if quick else SEEDS)[task]:
                if time.monotonic() > deadline:
                    rows.append({"task": task, "method": method, "seeds": n, "skipped": "budget spent"})
                    continue
                kw = dict(warmup=warmup, device=device, data_dir=data, verify=False)
                row = {"task": task, "method": method, "seeds": n}
                for mode in (["off", "auto"] if device.type == "cuda" else ["off"]):
                    m = measure(method, task, protocol, n, steps=steps, capture=mode, **kw)
                    row[m.mode] = m.seed_steps_per_s
                    row["ops_per_step"] = m.ops_per_step or row.get("ops_per_step")
                try:
                    loop_steps = max(2, min(steps, 20_000 // n))
                    row["loop"] = measure_loop(method, task, protocol, n, steps=loop_steps, **kw).seed_steps_per_s
                except ValueError as exc:  # no loop baseline for this pair
                    row["loop"] = None
                    row["loop_note"] = str(exc)
                best = max(v for k, v in row.items() if k in ("eager", "cuda-graph"))
                row["vs_loop"] = best / row["loop"] if row.get("loop") else None
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def boundaries(device: torch.device, data: Path, tasks: list[str], quick: bool, rows: list[dict]) -> list[dict]:
    """Seconds of a task boundary (diagnostics on the probe: SVD-based ranks; held-out evaluation) next
    to the seconds of the task's training steps at the measured eager/captured rate, bp, S = 8."""
    from plastibench.bench import started_engine
    out = []
    for task in tasks:
        protocol, n = ("smoke" if quick else "paper"), 8
        engine = started_engine("bp", task, protocol, n, device=device, data_dir=data, verify=False)
        timings = {}
        for name, fn in (("diagnostics", lambda: engine.task.diagnostics(0, engine.net)),
                         ("end_task", lambda: engine.task.end_task(0, engine.net))):
            fn()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            timings[name] = time.perf_counter() - start
        rate = max((r.get("cuda-graph") or r.get("eager") or 0) for r in rows
                   if r.get("task") == task and r.get("method") == "bp" and "skipped" not in r) or None
        steps = engine.task.steps_in_task(0)
        train = steps * n / rate if rate else None
        out.append({"task": task, "seeds": n, "diagnostics_s": timings["diagnostics"], "end_task_s": timings["end_task"],
                    "train_s_at_measured_rate": train})
        print(json.dumps(out[-1]), flush=True)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print(f"{'task':>10} {'method':>6} {'S':>5} {'eager':>12} {'captured':>12} {'loop':>10} {'vs loop':>8} {'ops':>5}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['task']:>10} {r['method']:>6} {r['seeds']:>5}  skipped: {r['skipped']}")
            continue
        vs_loop = "-" if r.get("vs_loop") is None else f"{r['vs_loop']:.1f}x"
        print(f"{r['task']:>10} {r['method']:>6} {r['seeds']:>5} {_fmt(r.get('eager')):>12} "
              f"{_fmt(r.get('cuda-graph')):>12} {_fmt(r.get('loop')):>10} {vs_loop:>8} {_fmt(r.get('ops_per_step'), 'd'):>5}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default="gpu-check.json", type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every code path")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for the throughput part")
    ap.add_argument("--tasks", default="scr,pmnist,cimagenet,icifar100")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    tasks = args.tasks.split(",")
    started = time.monotonic()
    env = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), args.quick)
        checks = correctness(device, data, tasks)
        for c in checks:
            print(("PASS " if c["ok"] else "FAIL ") + f"{c['check']}: max |diff| {c['max_abs_diff']:.3g}", flush=True)
        rows = throughput(device, data, tasks, args.quick, time.monotonic() + args.budget)
        bounds = boundaries(device, data, tasks, args.quick, rows)
    report = {"environment": env, "correctness": checks, "throughput": rows, "boundaries": bounds,
              "seconds": time.monotonic() - started}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    print(f"wrote {args.json} in {report['seconds']:.0f} s")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
