"""What every benchmark shares: its log line, its work directory, running its steps so one
failure keeps the others' figures, the cells of its report tables, and writing its generated
section into a markdown document without touching the other sections."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.peers.orthanc import OrthancServer

Step = tuple[str, Callable[[], None]]


def log(message: str) -> None:
    """One progress line, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def work_directory(stack: ExitStack, prefix: str, *, keep: bool) -> Path:
    """A fresh directory for one run, removed when ``stack`` closes unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    log(f"work directory {workdir}")
    return workdir


def recorded_args(args: argparse.Namespace, *, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """The command line of a run as JSON-friendly values (paths as strings)."""
    skipped = set(leave_out)
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
            if k not in skipped}


def run_steps(steps: Sequence[Step], timings: dict[str, float], errors: list[str]) -> None:
    """Run each step in turn, timing it; a step that fails is reported in ``errors`` and the
    next one still runs (its figures are kept). Load averages frame the whole."""
    timings["loadavg_start"] = os.getloadavg()[0]
    for name, step in steps:
        log(f"== {name} (load average {os.getloadavg()[0]:.1f})")
        t0 = time.perf_counter()
        try:
            step()
        except Exception as exc:  # keep the other steps' figures; report the failure
            last = str(exc).strip().splitlines()[-1:] or [""]
            errors.append(f"{name}: {type(exc).__name__}: {last[0]}")
            log(f"!! {name} failed: {exc}")
        timings[f"{name}_s"] = time.perf_counter() - t0
    timings["loadavg_end"] = os.getloadavg()[0]


# -- table cells -----------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    """Seconds as whole milliseconds ("-" when not measured)."""
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def times(value: float | None) -> str:
    """A ratio as "1.23x" ("-" when not measured)."""
    return "-" if value is None else f"{value:.2f}x"


def verdict(ok: bool | None, *, unmeasured: str = "not measured", met: str = "**met**") -> str:
    """Whether a target was met, as a report says it."""
    return unmeasured if ok is None else (met if ok else "**NOT met**")


# -- the generated section of a document ------------------------------------------------------


def replace_section(path: Path, begin: str, end: str, section: str, *,
                    new_heading: str = "", new_file: str = "# Benchmarks\n") -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the one
    between those markers in ``path``; on first use append it after ``new_heading``, leaving
    every other section as it is (``new_file`` starts a document that does not exist)."""
    text = path.read_text() if path.exists() else new_file
    if begin in text and end in text:
        before = text.split(begin, 1)[0]
        after = text.split(end, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new_heading + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_footer(errors: Sequence[str], timings: dict[str, float], cpus: object,
               rest: str) -> list[str]:
    """The end of a report: the steps that failed, the time each step took, and the load
    average around the measurements; ``rest`` continues that last sentence after "(on N CPUs"."""
    lines: list[str] = []
    if errors:
        lines += ["", "#### Steps that failed", ""] + [f"- {e}" for e in errors]
    spent = {k: v for k, v in timings.items() if k.endswith("_s")}
    lines += ["", "Time spent: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s"
                                             for k, v in spent.items()) + ".",
              "", f"1-minute load average at the start of the measurements "
              f"{timings.get('loadavg_start', 0):.1f}, at the end "
              f"{timings.get('loadavg_end', 0):.1f} (on {cpus} CPUs" + rest]
    return lines


def add_output_arguments(parser: argparse.ArgumentParser, doc_path: Path) -> None:
    """--output (the document whose generated section is replaced), --json (every measurement
    as JSON) and --keep (keep the work directory)."""
    parser.add_argument("--output", type=Path, default=doc_path,
                        help="markdown file whose generated section is replaced")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every measurement as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")


def started_orthanc(stack: ExitStack, workdir: Path) -> OrthancServer:
    """The Orthanc a run measures against (AE title ORTHANC), stopped when ``stack`` closes."""
    orthanc = OrthancServer(workdir / "orthanc", ae_title="ORTHANC")
    orthanc.start()
    stack.callback(orthanc.stop)
    return orthanc
