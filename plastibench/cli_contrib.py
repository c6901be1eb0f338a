"""The ``plot`` and ``new-method`` commands, as plain typer command functions.

``cli.py`` registers them with ``app.command("plot")(plot_command)`` and
``app.command("new-method")(new_method_command)``. Usage errors exit with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .cli_common import fail
from .errors import RunFileError, UsageError

err = Console(stderr=True)


def plot_command(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", show_default=False,
                                                   help="Run directories (runs/TASK/PROTOCOL/METHOD-HASH), all "
                                                        "of one task and protocol.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure file, e.g. curves.png (.pdf and .svg "
                                         "work too).", show_default=False)],
    metric: Annotated[Optional[str], typer.Option(help="A metric of metrics.csv (e.g. dead_fraction/layer0), "
                                                  "a layer mean (dead_fraction, effective_rank, stable_rank), "
                                                  "or 'all' for a panel per diagnostic. Default: the "
                                                  "protocol's primary metric.")] = None,
    by: Annotated[Optional[str], typer.Option(help="'transition': each method's score (95% CI) against N of "
                                              "task.transition=linear:N (abrupt = 0), one point per run.",
                                              show_default=False)] = None,
    band: Annotated[str, typer.Option(help="The 95% band over seeds: 't' (Student t, the summary's CI) or "
                                      "'bootstrap' (scipy's BCa bootstrap of the mean, as the reference's RL "
                                      "figures).")] = "t",
):
    """Plot a metric over the task stream: one line per run, mean over seeds, 95% CI band.

    Tasks are binned as the papers do (scr: 2 change periods; pmnist: 1 task; else about 50 bins).

    The band is the Student-t 95% CI of the per-seed bin means (--band bootstrap: the bootstrap CI).

    Unfinished runs are plotted as far as their metrics.csv goes.

    With --by transition: runs of one task and protocol that differ only in task.transition.
    """
    from . import plot_by, plots

    from .runfiles import read_config

    try:
        _check_format(output)
        for d in run_dirs:
            if (Path(d) / "config.yaml").is_file() and (Path(d) / "metrics.csv").is_file():
                read_config(Path(d) / "config.yaml")  # damaged or hand-edited: one line naming the field
        if band not in plots.BANDS:
            raise UsageError(f"--band {band}: choose one of {', '.join(plots.BANDS)}")
        if by is not None:
            if metric is not None:
                raise UsageError("--by plots the protocol's score; leave out --metric")
            runs = [plots.load_run(d) for d in dict.fromkeys(Path(d).resolve() for d in run_dirs)]
            metrics = [f"score by {by}"]
            plot_by.draw(runs, by, output)
        else:
            runs = plots.load_runs(run_dirs)
            metrics = plots.resolve_metrics(runs, metric)
            plots.draw(runs, metrics, output, band)
    except UsageError as exc:
        raise fail(str(exc))
    except RunFileError as exc:
        raise fail(str(exc), 1)
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror or exc}; choose another --output", 1)
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # files that parse but do not agree
        raise fail(f"the files of {', '.join(map(str, run_dirs))} do not agree with each other "
                   f"({type(exc).__name__}: {' '.join(str(exc).split())[:80]}); restore them or re-run with "
                   "--restart", 1)
    for run in runs:
        if not run.finished:
            err.print(f"Note: {run.directory} is unfinished (no summary.yaml); plotted its "
                      f"{run.tasks_done} of {run.spec['n_tasks']} tasks.", highlight=False)
    typer.echo(f"wrote {output} ({', '.join(metrics)}; {len(runs)} run{'s' * (len(runs) > 1)})")


def _check_format(output: Path) -> None:
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if output.suffix and output.suffix[1:].lower() not in kinds:
        raise UsageError(f"--output {output}: unknown figure format {output.suffix!r}; use .png, .pdf or .svg")
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory; name a figure file, e.g. {output / 'curves.png'}")


def new_method_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Method name: a Python identifier, e.g. my_method.",
                                        show_default=False)],
    dir_: Annotated[Path, typer.Option("--dir", help="Folder of the method files.")] = Path("methods"),
):
    """Write methods/NAME.py: a working method skeleton to fill in (paper, update rule, defaults).

    The file registers at once and passes the conformance suite as written.

    Replace its TODOs and its example hook by your method, then run its tests (CONTRIBUTING.md).
    """
    from .scaffold import write_method

    try:
        path = write_method(name, dir_)
    except UsageError as exc:
        raise fail(str(exc))
    typer.echo(f"wrote {path}\nnext: fill in its TODOs, then run\n"
               f"  python -m pytest tests/test_conformance.py -k {name}\n"
               f"  plastibench run --method {name} --task scr --protocol smoke\n"
               "and read CONTRIBUTING.md for the pull request.")
