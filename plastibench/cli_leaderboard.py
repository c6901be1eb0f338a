"""``plastibench leaderboard submit|check|render|verify`` and ``plastibench compare``.

``cli.py`` mounts them: ``app.add_typer(leaderboard_app, name="leaderboard")`` and
``app.command("compare")(compare_command)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import compare, leaderboard
from .cli_common import fail
from .errors import RunFileError
from .leaderboard import DEFAULT_TUNING, IntegrityError, LeaderboardError
from .results import ResultError, load_summary, read_yaml, summary_at_task
from .runfiles import read_run
from .stats import iqm, iqm_ci95

leaderboard_app = typer.Typer(
    help="Leaderboard entries (raw per-seed values) accepted by pull request: submit a run, render "
         "README.md, check everything.", no_args_is_help=True)

RootOption = Annotated[Path, typer.Option("--root", help="Leaderboard folder (entries/ and README.md).")]
IQM_RESAMPLES = 10000


@leaderboard_app.command()
def submit(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory (with summary.yaml).")],
    root: RootOption = Path("leaderboard"),
    tuning: Annotated[str, typer.Option(help="How the hyperparameters were chosen.")] = DEFAULT_TUNING,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing entry.")] = False,
    allow_unverified: Annotated[bool, typer.Option(
        "--allow-unverified", help="Accept a run on data whose checksums were not verified (--no-verify); "
                                   "the entry is marked † and not ranked.")] = False,
):
    """Write ROOT/entries/TASK/PROTOCOL/METHOD.yaml from a finished run: provenance and raw per-seed values.

    Every number is recomputed from the run's metrics.csv and config.yaml; a summary.yaml that
    disagrees with them is refused (exit 1), as is a run on unverified data without --allow-unverified.
    """
    try:
        if (Path(run_dir) / "summary.yaml").is_file():
            read_run(run_dir)  # damaged or hand-edited run files: one line naming the file and field
        path = leaderboard.submit(run_dir, root, tuning, force, allow_unverified)
    except RunFileError as exc:
        raise fail(str(exc), 1)
    except IntegrityError as exc:
        raise fail(str(exc), code=1)
    except LeaderboardError as exc:
        raise fail(str(exc))
    except OSError as exc:
        raise fail(f"cannot write the entry under {root}: {exc.strerror or exc}; choose a writable --root", 1)
    typer.echo(f"wrote {path}")
    typer.echo(f"next: plastibench leaderboard render --root {root} && plastibench leaderboard check "
               f"--root {root}", err=True)


@leaderboard_app.command()
def check(
    root: RootOption = Path("leaderboard"),
    against: Annotated[Optional[str], typer.Option("--against", metavar="GIT_REF",
                                                   help="Also fail when an entry of GIT_REF was removed or "
                                                        "its hashed content changed.")] = None,
):
    """Validate every entry (content hash, raw values, registries) and README.md against a fresh render."""
    try:
        n, problems = leaderboard.check(root, against)
    except LeaderboardError as exc:
        raise fail(str(exc))
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(_unreadable(root, exc), 1)
    for problem in problems:
        typer.echo(problem)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{n} entries OK")


@leaderboard_app.command()
def render(root: RootOption = Path("leaderboard")):
    """Rewrite the tables of ROOT/README.md (between its marker comments) from the entries' raw values."""
    try:
        path, shown, skipped = leaderboard.render(root)
    except LeaderboardError as exc:
        raise fail(str(exc))
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(_unreadable(root, exc), 1)
    for problem in skipped:
        typer.echo(f"skipped {problem}", err=True)
    typer.echo(f"wrote {path} ({shown} entries)")


def _unreadable(root: Path, exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"a file under {root} is not UTF-8 text ({exc.reason}); restore it from git or remove it"
    return f"cannot read or write {getattr(exc, 'filename', None) or root}: {exc.strerror or exc}"


@leaderboard_app.command()
def verify(
    entry: Annotated[Optional[str], typer.Argument(metavar="[ENTRY]", help="An entry file or TASK/PROTOCOL/METHOD; "
                                                                            "default: every entry.")] = None,
    root: RootOption = Path("leaderboard"),
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="How many of each entry's seeds to re-run "
                                                               "(drawn at random).")] = 2,
    tasks: Annotated[int, typer.Option("--tasks", min=1, help="How many first tasks to re-run (at most the "
                                                               "entry's replay.tasks).")] = 1,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Dataset folder (data tasks).")] = None,
    sample_seed: Annotated[Optional[int], typer.Option("--sample-seed", help="Seed of the draw of seeds "
                                                                              "(default: a fresh one).")] = None,
):
    """Re-run the first tasks of some of each entry's seeds here (CPU) and compare them with its replay values.

    Exit 1 with one line per entry whose re-run differs (rtol 1e-4) or that fails its checks.
    """
    try:
        entries, problems = leaderboard.select_entries(root, entry)
    except LeaderboardError as exc:
        raise fail(str(exc))
    rng = random.Random(sample_seed)
    failed = len(problems)
    for problem in problems:
        typer.echo(problem)
    for e in entries:
        line, ok = leaderboard.verify_entry(e, seeds, tasks, rng, data_dir)
        typer.echo(line)
        failed += not ok
    if failed:
        raise typer.Exit(1)
    typer.echo(f"{len(entries)} entries reproduced")


def _summary(run_dir: Path, at_task: int | None = None) -> dict[str, Any]:
    path = Path(run_dir) / "summary.yaml"
    if not Path(run_dir).is_dir():
        raise fail(f"{run_dir}: not a run directory")
    if at_task is None and not path.exists():
        raise fail(f"{run_dir}: no summary.yaml; the run is unfinished")
    try:
        # recomputed from metrics.csv
        return load_summary(run_dir) if at_task is None else summary_at_task(run_dir, at_task)
    except (ResultError, RunFileError) as exc:
        raise fail(str(exc), 1)


def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR",
                                                   help="Finished run directories of one task and protocol (with "
                                                        "--at-task N: runs that hold N tasks).")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table and its notes as Markdown "
                                                               "(for docs) instead of a terminal table.")] = False,
    at_task: Annotated[Optional[int], typer.Option(
        "--at-task", min=1, metavar="N",
        help="Score the first N tasks as the protocol scores a run of N tasks (the mean over the last "
             "summary fraction of them), e.g. --at-task 2000 on cimagenet/paper for the length of the "
             "paper's backprop runs. Runs need only N tasks in metrics.csv.")] = None,
):
    """Compare finished runs of one task and protocol with the leaderboard's statistics table.

    Each method is compared to cbp (or, without a cbp run, to the first directory's method).
    Example: plastibench compare runs/scr/short/* --markdown > table.md
    """
    summaries = [_summary(d, at_task) for d in run_dirs]
    kinds = {(s["task"], s["protocol"], s["protocol_hash"]) for s in summaries}
    if len(kinds) > 1:
        runs = "; ".join(f"{d}: {s['task']}/{s['protocol']} ({s['protocol_hash']})"
                         for d, s in zip(run_dirs, summaries))
        raise fail(f"runs of different tasks, protocols or protocol hashes cannot be compared: {runs}")
    methods = [s["method"] for s in summaries]
    labels = [m if methods.count(m) == 1 else str(d) for m, d in zip(methods, run_dirs)]
    baseline = labels[methods.index(leaderboard.BASELINE)] if leaderboard.BASELINE in methods else labels[0]
    first = summaries[0]
    results = [compare.result_from_summary(label, s) for label, s in zip(labels, summaries)]
    try:
        rows = compare.statistics_table(results, baseline, first["higher_is_better"])
    except ValueError as exc:
        raise fail(f"{exc}; give each run directory once")
    title = compare.title(first["task"], first["protocol"], first["protocol_hash"], first["metric"],
                          first["higher_is_better"])
    notes = compare.notes(baseline)
    if at_task is not None:
        title += f", after task {at_task}"
        notes = [f"after task {at_task}: per-seed score = {first['aggregate']} (the score of a run of "
                 f"{at_task} tasks); dead units and effective rank are measured at the end of a run only."] + notes
    if markdown:
        typer.echo(_markdown(title, notes, rows, baseline))
        return
    console = Console()
    if leaderboard.BASELINE not in methods:
        console.print(f"No {leaderboard.BASELINE} run among them: comparing against {baseline} (the first "
                      "directory).", highlight=False, markup=False)
    table = Table(title=title)
    for col in compare.header(baseline):
        table.add_column(Text(col), justify="left" if col == "method" else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in compare.cells(row, baseline)))
    console.print(table)
    console.print("\n".join(notes), highlight=False, markup=False)
    _print_iqm(console, results)


def _markdown(title: str, notes: list[str], rows: list, baseline: str) -> str:
    """The statistics table as a Markdown pipe table under its title, with the notes as a list."""
    head = compare.header(baseline)
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(compare.cells(row, baseline)) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"* {note}" for note in notes])


def _print_iqm(console: Console, results: list[compare.Result]) -> None:
    """Secondary view: IQM with a bootstrap CI, for runs of more than 10 seeds only."""
    lines = []
    for r in results:
        values = list(r.per_seed.values())
        ci = iqm_ci95([values], reps=IQM_RESAMPLES)
        if ci is not None:
            lines.append(f"  {r.label}: {compare.interval(iqm(values), ci)}")
    if lines:
        console.print(f"IQM (25% trimmed mean) with percentile-bootstrap 95% CI ({IQM_RESAMPLES} resamples, "
                      "seeded; shown above 10 seeds only):\n" + "\n".join(lines), highlight=False, markup=False)
