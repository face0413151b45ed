"""Shared CLI plumbing: the console, progress bars, and turning TangentError into one line + exit 2."""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import warnings
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import TangentError
from ..io import format_number

console = Console()
err_console = Console(stderr=True)


def progress(transient: bool = False, disable: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time and ETA (on stderr, so stdout stays parseable);
    ``disable`` for ranks other than 0."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=disable,
    )


PLAIN_EVERY_S = 60.0  # a CI log gets a line a minute, not one per step


class PlainProgress:
    """Progress for a stderr that is not a terminal (a CI log, a pipe), where a live bar shows nothing until it
    ends: one plain line ``what: done/total, elapsed`` at most every :data:`PLAIN_EVERY_S` seconds."""

    def __init__(self, disable: bool = False):
        import time

        self.disable, self.clock = disable, time.monotonic
        self.start = self.last = self.clock()

    def __call__(self, what: str, done: int, total: int | None) -> None:
        now = self.clock()
        if self.disable or now - self.last < PLAIN_EVERY_S:
            return
        self.last = now
        of = f"/{total}" if total else ""
        err_console.print(f"{escape(what)}: {done}{of}, {now - self.start:.0f} s elapsed", highlight=False,
                          soft_wrap=True)


@contextlib.contextmanager
def progress_by_stage(disable: bool = False) -> Iterator[Callable[..., None]]:
    """Yield ``update(stage, done, total, description=None)``, one bar per stage. The bars appear at the first
    update, so a command refused while it checks its input prints its one error line alone, and an error erases
    them. ``disable`` for ranks other than 0."""
    bar = progress(disable=disable)
    tasks: dict[str, int] = {}
    plain = PlainProgress(disable or err_console.is_terminal)

    def update(stage: str, done: int, total: int | None, description: str | None = None) -> None:
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total, **({"description": description} if description else {}))
        plain(description or stage, done, total)

    try:
        yield update
    except BaseException:
        bar.live.transient = True
        raise
    finally:
        if tasks:  # stopping a bar that never started prints a stray blank line
            bar.stop()


@contextlib.contextmanager
def progress_when_working(stage: str, disable: bool = False) -> Iterator[Callable[..., None]]:
    """:func:`progress_by_stage` with a single stage: yield ``update(done, total, description=None)``."""
    with progress_by_stage(disable) as update_stage:

        def update(done: int, total: int | None, description: str | None = None) -> None:
            update_stage(stage, done, total, description)

        yield update


def parse_numbers(text: str | None, option: str) -> list[float] | None:
    """``"1,0.5"`` -> [1.0, 0.5] for a comma-separated option; None when the option was not given."""
    if text is None:
        return None
    try:
        numbers = [float(x) for x in text.split(",")]
    except ValueError:
        raise TangentError(f"{option} must be comma-separated numbers, got '{text}'") from None
    bad = next((x for x in numbers if not math.isfinite(x)), None)
    if bad is not None:
        raise TangentError(f"{option} must be finite numbers, got {bad} in '{text}'")
    return numbers


NUM_LABELS_HELP = "Classes of a classification task whose files do not show them all (labels 0..N-1)."
SCORE_RANGE_HELP = "low,high range of a regression task's scores (STS-B: 0,5 built in)."


def task_options(num_labels: int | None, score_range: str | None) -> dict:
    """``--num-labels`` / ``--score-range`` as keyword arguments of :func:`tangentft.data.load_task`."""
    scores = parse_numbers(score_range, "--score-range")
    if scores is not None and len(scores) != 2:
        raise TangentError(f"--score-range takes two numbers low,high, got '{score_range}'")
    return {"num_labels": num_labels, "score_range": tuple(scores) if scores else None}


def device_option():
    return typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA when present; a launcher's local rank picks the GPU).")


def dtype_option():
    return typer.Option("float32", "--dtype", help="Model weights' dtype: float32 | bfloat16 | float16 (kernels stay float64).")


def nproc_option():
    return typer.Option(1, "--nproc", help="Start this many local ranks through torch.distributed.run (gloo on CPU, NCCL on GPU).")


def _command_line(ctx: typer.Context, drop: str) -> list[str]:
    # The parsed options back into a command line: CliRunner and console scripts have no usable sys.argv.
    names = []
    c = ctx
    while c.parent is not None:
        names.append(c.info_name)
        c = c.parent
    argv = list(reversed(names))
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == drop or value is None:
            continue
        if param.param_type_name == "argument":
            argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            continue
        if param.is_flag:
            if value != param.default:
                argv.append(param.opts[0] if value else param.secondary_opts[0])
            continue
        for v in value if param.multiple else [value]:
            argv += [param.opts[0], str(v)]
    return argv


def relaunch(ctx: typer.Context, nproc: int) -> bool:
    """Run the current command again on ``nproc`` local ranks through torch's own launcher
    (``torch.distributed.run --standalone``, the elastic agent); True when it did, so the caller returns.

    Nothing happens for ``nproc`` 1 or when already running under a launcher.
    """
    from .. import distributed

    if nproc < 1:
        raise TangentError(f"--nproc must be ≥ 1, got {nproc}")
    if nproc == 1 or distributed.launched():
        return False
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = _command_line(ctx, drop="nproc")
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "tangentft", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        failed = ", ".join(f"rank {r} exit code {f.exitcode}" for r, f in sorted(exc.failures.items()))
        raise TangentError(f"{nproc}-process run failed: {failed} (the rank's own error is printed above)") from None
    return True


def extrapolation_note(cmp: dict) -> str:
    """", extrapolated to all training examples from the kernel sample's X" after a prediction's best when it was
    extrapolated from a sample, or "" without one."""
    own = cmp.get("predicted_best_sample")
    return "" if own is None else f", extrapolated to all training examples from the kernel sample's {format_number(own)}"


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # A user reads one line saying what is odd, not a UserWarning with a source line of library code.
    text = " ".join(str(message).split())
    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


INT64 = 2**63 - 1  # torch's seeds, sizes and counts are 64-bit: a larger integer overflows deep inside it


def _flags(fn: Callable) -> dict[str, str]:
    """Each parameter of command ``fn`` -> the option a user types for it (its first ``--long`` name)."""
    import inspect

    out = {}
    for name, param in inspect.signature(fn).parameters.items():
        decls = getattr(param.default, "param_decls", None) or ()
        out[name] = next((d for d in decls if d.startswith("--")), f"--{name.replace('_', '-')}")
    return out


def check_numbers(values: dict, flags: dict[str, str]) -> None:
    """Refuse, where the command line is parsed, every number no command can mean: a float option that is
    NaN or infinite, an integer option outside the 64-bit range (one line naming the option and value)."""
    for name, value in values.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise TangentError(f"{flags.get(name, name)} must be a finite number, got {v}")
            if isinstance(v, int) and abs(v) > INT64:
                raise TangentError(f"{flags.get(name, name)} {v} is out of range: integers here are at most {INT64}")


def friendly(fn: Callable) -> Callable:
    """Decorator for commands: a TangentError becomes one red line and exit code 2, never a traceback;
    an OSError (disk full, permission denied) one line naming the file; warnings one line each. Numeric
    options are checked first (:func:`check_numbers`)."""
    flags = _flags(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            check_numbers(kwargs, flags)
            with warnings.catch_warnings():
                warnings.simplefilter("default")  # once per place per command, also when run in-process again
                # A dependency's notice about its own API (torch.jit.script deprecated, …) is nothing a user can act on
                for category in (DeprecationWarning, FutureWarning):
                    warnings.filterwarnings("ignore", category=category)
                    warnings.filterwarnings("default", category=category, module=r"tangentft\b")
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except TangentError as exc:
            fail(exc.message, exc.exit_code)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


def task_columns(text_column: str | None, label_column: str | None) -> dict[str, str]:
    """The ``columns`` mapping of tangentft.data.load_task for --text-column/--label-column."""
    return {k: v for k, v in (("sentence", text_column), ("label", label_column)) if v}
