"""`hetcc conformance`: run the backend conformance cases (hetcc/measure/conformance.py) on the
targets usable here, write one JSON report per (case, target), and print the coverage table."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from hetcc.cli.inputs import CliError
from hetcc.errors import plain

EXIT_FAILED = 4
"""Some case gave a wrong result, crashed outside hetcc's errors, or lost pinned native coverage."""

EPILOG = ("examples:\n  hetcc conformance --out conformance/\n"
          "  hetcc conformance --targets onnxruntime:cpu --cases linear,sdpa,gpt\n"
          "  hetcc conformance --cases op --json | jq '.reports[] | select(.status != \"native\")'\n"
          "  hetcc conformance --from conformance/ --markdown\n\n"
          "Each case is compiled for one target alone (torch:cpu only takes what it cannot run), run, and\n"
          "compared with eager PyTorch. Exit 4 when a result is wrong, a case crashes with an error that is\n"
          "not hetcc's, or a case pinned as native on a CPU target falls back. See docs/conformance.md.")


def add_arguments(p) -> None:
    p.add_argument("--targets", help="comma-separated (default: every target usable here; a GPU as device 0)")
    p.add_argument("--cases", help="comma-separated case names, or `op` / `model` for one kind (default: all)")
    p.add_argument("--examples", metavar="DIR",
                   help="examples/ folder for the model-level cases (default: the source checkout's)")
    p.add_argument("--out", metavar="DIR", help="write CASE--TARGET.json reports and coverage.md here")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="show the coverage of reports written earlier (by --out or the tests); run nothing")
    p.add_argument("--markdown", action="store_true", help="print the coverage table as markdown")
    p.add_argument("--list", action="store_true", help="list the cases and exit")


def cmd_conformance(args) -> int:
    from hetcc.measure import conformance

    if args.from_dir:
        given = [f"--{n}" for n in ("targets", "cases", "examples", "out") if getattr(args, n)]
        if given or args.list:
            raise CliError(f"--from shows reports as they were written; {', '.join(given or ['--list'])} "
                           "apply to a run")
        return _show(conformance.read_reports(args.from_dir), args, None, None)
    names = [n.strip() for n in (args.cases or "").split(",") if n.strip()]
    cases = conformance.select_cases(conformance.all_cases(args.examples), names)
    if args.list:
        for case in cases:
            print(f"{case.name:14s} {case.kind:6s} {case.about}")
        return 0
    targets = _targets(args.targets)
    started = time.perf_counter()
    reports = []
    with contextlib.redirect_stdout(sys.stderr):  # exporters' chatter must not reach --json
        for target in targets:
            for case in cases:
                report = conformance.run_case(case, target)
                reports.append(report)
                print(f"hetcc: conformance: {case.name} on {target}: {conformance.cell(report)} "
                      f"({report['compile_seconds'] or 0:.1f}s)", file=sys.stderr, flush=True)
                if args.out:
                    conformance.write_report(report, args.out)
    if args.out:
        Path(args.out, "coverage.md").write_text(conformance.coverage_markdown(reports), encoding="utf-8")
    return _show(reports, args, args.out, time.perf_counter() - started)


def _targets(text: str | None) -> list[str]:
    from hetcc.backends.registry import resolve
    from hetcc.measure.conformance import conformance_target, conformance_targets
    from hetcc.target import parse_targets

    if not text:
        return conformance_targets()
    out = []
    for target in parse_targets(text):
        resolve(target)  # unknown or unusable: fails now, with the reason
        out.append(conformance_target(str(target)))
    return out


def _show(reports: list[dict], args, out: str | None, seconds: float | None) -> int:
    from hetcc.measure.conformance import coverage_markdown, failed

    failures = [f"{r['case']} on {r['target']}" for r in reports if failed(r)]
    if args.json:
        print(json.dumps({"reports": reports, "out": out, "failed": failures, "seconds": seconds},
                         indent=1, default=str))
    elif args.markdown:
        print(coverage_markdown(reports), end="")
    else:
        _render(reports, out, seconds)
    for failure in failures:
        print(f"hetcc: conformance failed: {failure}", file=sys.stderr)
    return EXIT_FAILED if failures else 0


STYLE = {"native": "green", "fallback": "yellow", "error": "magenta", "wrong": "bold red", "crash": "bold red"}


def _render(reports: list[dict], out: str | None, seconds: float | None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from hetcc.measure.conformance import cell, coverage

    targets, rows, table = coverage(reports)
    grid = Table(title="conformance: each case compiled for one target alone, compared with eager PyTorch",
                 caption="cell: native / fallback (nodes on torch:cpu) / error (a clear hetcc error) / "
                         "WRONG / CRASH, then the max abs error; REGRESSED: pinned as native")
    grid.add_column("case")
    grid.add_column("kind")
    for t in targets:
        grid.add_column(t, justify="left")
    for kind, case in rows:
        cells = []
        for t in targets:
            r = table.get((case, t))
            if r is None:
                cells.append("-")
                continue
            err = f" {r['max_error']:.1e}" if r.get("max_error") is not None else ""
            style = "bold red" if r.get("regression") else STYLE.get(r["status"], "")
            cells.append(f"[{style}]{escape(cell(r))}[/]{err}")
        grid.add_row(case, kind, *cells)
    console = Console(highlight=False)
    console = console if console.is_terminal else Console(highlight=False, width=160)
    console.print(grid)
    for (case, target), r in table.items():
        if r["fallback_reasons"]:
            why, _ = next(iter(r["fallback_reasons"].items()))
            more = f" (+{len(r['fallback_reasons']) - 1} other reasons)" if len(r["fallback_reasons"]) > 1 else ""
            console.print(f"{case} on {target}: {len(r['fell_back'])} node(s) fell back, e.g. {why}{more}",
                          markup=False)
        for note in r.get("notes") or []:
            console.print(f"{case} on {target}: {note}", markup=False)
        if r["expected"] == "fallback" and r["status"] == "native":
            console.print(f"{case} on {target}: native now, but listed in KNOWN_FALLBACKS; remove it "
                          "there so a later fall-back is caught", markup=False)
        if r.get("error"):
            console.print(f"{case} on {target}: {r['status']} in {r['error'].get('stage', '?')}: "
                          f"{r['error']['type']}: {plain(r['error']['message'])}", markup=False)
    native = sum(r["status"] == "native" for r in reports)
    where = f"; reports in {out}" if out else ""
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    console.print(f"{native} of {len(reports)} (case, target) pairs native{took}{where}", markup=False)
