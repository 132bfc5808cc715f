"""The ``mason`` command line: ``mason scan``, ``mason dis``, ``mason show``.

    mason scan PATH... [--allow NAME] [--preset NAME] [--json | --sarif] [--emit-allow]
    mason dis PATH
    mason show PATH

``mason scan`` reads files and folders (recursively) without loading anything, and exits
with the status CI pipelines expect from a scanner (picklescan's and ClamAV's convention):

* 0: every file is safe under the policy;
* 1: at least one is not (needs-allow, malformed or dangerous);
* 2: an error kept a file from being scanned (it cannot be read), or the command line is
  wrong.  An error takes precedence over findings.

``python -m mason`` is the same program.  Inspection never runs what it reads (unlike
``python -m pickle FILE``, which loads the file it is asked to show).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "EXIT_SAFE", "EXIT_UNSAFE", "EXIT_ERROR"]

EXIT_SAFE = 0
EXIT_UNSAFE = 1
EXIT_ERROR = 2

_SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_INFO_URI = "https://github.com/mason-pickle/mason"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # argparse exits with 2 too; keep its message, our format
        self.print_usage(sys.stderr)
        print(f"mason: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mason", description="Read pickles without running them.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    scan = sub.add_parser("scan", help="check files and folders for what loading them would do",
                          description="Check files and folders for what loading them would "
                                      "do, under an allowlist policy. Exit status: 0 all safe, "
                                      "1 some not safe, 2 error.")
    scan.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    scan.add_argument("--allow", action="append", default=[], metavar="NAME",
                      help="also allow this global (module.name, or module.*); repeatable, "
                           "comma-separated, or @FILE for a list, one per line")
    scan.add_argument("--preset", action="append", default=[], metavar="NAME",
                      help="also allow a preset's names (numpy, pandas, sklearn, torch)")
    out = scan.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON report")
    out.add_argument("--sarif", action="store_true",
                     help="print a SARIF 2.1.0 log (for code scanning in CI)")
    out.add_argument("--emit-allow", action="store_true",
                     help="print the allow entries the files need beyond the policy, one per "
                          "line (build an allowlist from files you trust)")
    scan.add_argument("--dangerous", action="store_true",
                      help="with --emit-allow: include names known to run code")
    scan.add_argument("--max-size", type=int, default=None, metavar="BYTES",
                      help="largest decompressed member to unpack (default 4 GiB)")
    scan.add_argument("-v", "--verbose", action="store_true",
                      help="list every file, safe ones included")
    scan.add_argument("-q", "--quiet", action="store_true",
                      help="print nothing; only the exit status")
    scan.add_argument("--no-progress", action="store_true", help="no progress bar")

    dis = sub.add_parser("dis", help="list the opcodes of a pickle (never loads it)")
    dis.add_argument("path", metavar="PATH")
    show = sub.add_parser("show", help="write out what a pickle builds (never loads it)")
    show.add_argument("path", metavar="PATH")
    show.add_argument("--max-items", type=int, default=50, metavar="N",
                      help="items shown per container (default 50)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "scan":
            return _scan(args)
        return _inspect(args)
    except _UsageError as exc:
        print(f"mason: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mason: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        try:
            sys.stdout.close()
        except OSError:
            pass
        return EXIT_ERROR


def _inspect(args) -> int:
    from .analysis import dis, show
    if os.path.isdir(args.path):
        print(f"mason: error: {args.path} is a folder; {args.command} takes one file",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.command == "dis":
            dis(args.path, sys.stdout)
        else:
            sys.stdout.write(show(args.path, max_items=args.max_items))
    except OSError as exc:
        print(f"mason: error: {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_SAFE


def _allow_list(values: list[str]) -> list[str]:
    entries: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith("@"):
                try:
                    with open(item[1:], encoding="utf-8") as handle:
                        for line in handle:
                            line = line.split("#", 1)[0].strip()
                            if line:
                                entries.append(line)
                except OSError as exc:
                    raise _UsageError(f"cannot read the allow list {item[1:]}: "
                                      f"{exc.strerror or exc}") from None
            else:
                entries.append(item)
    return entries


def _policy(args):
    from .analysis.scan import resolve_policy
    try:
        return resolve_policy(None, _allow_list(args.allow) or None, args.preset or None)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _scan(args) -> int:
    from .analysis.scan import DEFAULT_MAX_SIZE, iter_files, scan

    policy = _policy(args)
    errors: list[tuple[str, BaseException]] = []
    missing = [p for p in args.paths if not os.path.exists(p)]
    for path in missing:
        errors.append((path, FileNotFoundError(2, "No such file or directory", path)))
    files = list(iter_files([p for p in args.paths if p not in missing], errors))
    reports = []
    progress = _Progress(len(files), enabled=not (args.no_progress or args.quiet or args.json
                                                  or args.sarif or args.emit_allow))
    started = time.perf_counter()
    try:
        for path in files:
            progress.step(path)
            try:
                reports.append(scan(path, policy, max_size=args.max_size or DEFAULT_MAX_SIZE))
            except OSError as exc:
                errors.append((path, exc))
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    unsafe = [r for r in reports if not r.ok]

    if args.emit_allow:
        return _emit_allow(reports, errors, args.dangerous)
    if args.json:
        _print_json(reports, errors, elapsed)
    elif args.sarif:
        _print_sarif(reports, errors)
    elif not args.quiet:
        _print_text(reports, errors, elapsed, args.verbose)
    if errors:
        return EXIT_ERROR
    return EXIT_UNSAFE if unsafe else EXIT_SAFE


def _emit_allow(reports, errors, dangerous: bool) -> int:
    entries: set[str] = set()
    status = EXIT_SAFE
    for report in reports:
        blocking = [f for f in report.findings
                    if f.severity == "malformed" or (f.severity == "dangerous" and not dangerous)
                    or (f.severity in ("dangerous", "needs-allow") and not f.allow)]
        if blocking:
            status = EXIT_UNSAFE
            for finding in blocking:
                print(f"mason: {report.source}: {finding}", file=sys.stderr)
            continue
        entries.update(report.allow)
    for path, exc in errors:
        print(f"mason: error: {path}: {_reason(exc)}", file=sys.stderr)
    if status == EXIT_UNSAFE:
        print("mason: no allowlist: the files above need what an allowlist should not admit "
              "(use --dangerous only for names you have checked)", file=sys.stderr)
    else:
        for entry in sorted(entries):
            print(entry)
    return EXIT_ERROR if errors else status


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _print_json(reports, errors, elapsed: float) -> None:
    from . import __version__
    counts = _counts(reports)
    document = {
        "tool": "mason", "version": __version__,
        "summary": {"files": len(reports), "errors": len(errors), **counts,
                    "seconds": round(elapsed, 3)},
        "files": [r.to_dict() for r in reports],
        "errors": [{"path": path, "error": _reason(exc)} for path, exc in errors],
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _counts(reports) -> dict[str, int]:
    counts = {"safe": 0, "needs-allow": 0, "malformed": 0, "dangerous": 0}
    for report in reports:
        counts[report.verdict.value] += 1
    return counts


_RULES = {
    "code execution": "Loading runs code of the file's choosing.",
    "process access": "Loading can start processes or reach the operating system.",
    "file access": "Loading can read, write or delete files.",
    "network access": "Loading can open network connections.",
    "attribute-access gadget": "Loading can reach attributes of objects by name.",
    "unknown import": "Loading imports a name the file computes or that this process "
                      "cannot resolve.",
    "resource bomb": "Loading can exhaust memory or time.",
    "not allowed": "The file names a global outside the allowlist.",
    "malformed": "The file is not a valid pickle, or breaks midway.",
    "archive": "The archive is damaged or built to mislead readers.",
    "external reference": "Loading needs data from outside the stream.",
}


def _rule_id(category: str) -> str:
    return "mason/" + category.replace(" ", "-").replace("_", "-")


def _print_sarif(reports, errors) -> None:
    from . import __version__
    rules = [{"id": _rule_id(category), "name": category.title().replace(" ", "").replace("-", ""),
              "shortDescription": {"text": category},
              "fullDescription": {"text": text},
              "helpUri": _INFO_URI}
             for category, text in _RULES.items()]
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    levels = {"dangerous": "error", "malformed": "error", "needs-allow": "warning",
              "note": "note"}
    results = []
    for report in reports:
        uri = _uri(report.source)
        for finding in report.findings:
            rule = _rule_id(finding.category)
            if rule not in index:
                index[rule] = len(rules)
                rules.append({"id": rule, "shortDescription": {"text": finding.category}})
            text = finding.message
            if finding.name:
                text = f"{finding.name}: {text}"
            if finding.member:
                text = f"{text} (in {finding.member})"
            if finding.allow and finding.severity in ("needs-allow", "dangerous"):
                text += f". Allow with: {finding.allow}"
            location = {"physicalLocation": {"artifactLocation": {"uri": uri}}}
            if finding.offset is not None and not finding.member:
                location["physicalLocation"]["region"] = {"byteOffset": finding.offset,
                                                          "byteLength": 1}
            if finding.member:
                location["logicalLocations"] = [{"name": finding.member,
                                                 "kind": "member"}]
            results.append({
                "ruleId": rule, "ruleIndex": index[rule], "level": levels[finding.severity],
                "message": {"text": text}, "locations": [location],
                "properties": {"severity": finding.severity, "verdict": report.verdict.value,
                               "name": finding.name, "offset": finding.offset,
                               "member": finding.member, "allow": finding.allow,
                               "count": finding.count},
            })
    notifications = [{"level": "error", "message": {"text": f"{path}: {_reason(exc)}"},
                      "locations": [{"physicalLocation": {"artifactLocation":
                                                          {"uri": _uri(path)}}}]}
                     for path, exc in errors]
    log = {
        "$schema": _SARIF_SCHEMA, "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "mason", "version": __version__,
                                "informationUri": _INFO_URI, "rules": rules}},
            "results": results,
            "invocations": [{"executionSuccessful": not errors,
                             "toolExecutionNotifications": notifications}],
            "artifacts": [{"location": {"uri": _uri(r.source)}, "length": r.size}
                          for r in reports],
        }],
    }
    json.dump(log, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _uri(path: str) -> str:
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    if relative.startswith(".."):
        relative = os.path.abspath(path)
    return relative.replace(os.sep, "/")


def _print_text(reports, errors, elapsed: float, verbose: bool) -> None:
    out = sys.stdout
    for report in reports:
        if not report.ok or verbose:
            out.write(str(report) + "\n")
    for path, exc in errors:
        print(f"mason: error: {path}: {_reason(exc)}", file=sys.stderr)
    counts = _counts(reports)
    size = sum(r.size for r in reports)
    table = _summary_rows(reports, counts, errors)
    rich = _rich_console(out)
    if rich is not None:
        from rich.table import Table
        grid = Table(title=f"mason scan: {len(reports)} files, {_size(size)} in "
                           f"{elapsed:.2f} s", show_edge=True)
        grid.add_column("verdict")
        grid.add_column("files", justify="right")
        grid.add_column("examples")
        styles = {"safe": "green", "needs-allow": "yellow", "malformed": "magenta",
                  "dangerous": "bold red", "error": "red"}
        for verdict, count, examples in table:
            grid.add_row(f"[{styles[verdict]}]{verdict}[/]", str(count), examples)
        rich.print(grid)
        return
    out.write(f"\nmason scan: {len(reports)} file{'s' if len(reports) != 1 else ''}, "
              f"{_size(size)} in {elapsed:.2f} s\n")
    width = max(len(v) for v, _, _ in table)
    for verdict, count, examples in table:
        out.write(f"  {verdict.ljust(width)}  {count:6d}  {examples}\n")


def _summary_rows(reports, counts, errors):
    rows = []
    for verdict in ("safe", "needs-allow", "malformed", "dangerous"):
        chosen = [r.source for r in reports if r.verdict.value == verdict]
        rows.append((verdict, counts[verdict], _examples(chosen) if verdict != "safe" else ""))
    if errors:
        rows.append(("error", len(errors), _examples([p for p, _ in errors])))
    return rows


def _examples(paths: list[str], limit: int = 3) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f", ... (+{len(paths) - limit})" if len(paths) > limit else "")


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def _rich_console(out):
    if not getattr(out, "isatty", lambda: False)():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=out)


class _Progress:
    """A progress bar on stderr for long scans: rich's when installed, else one line of
    text redrawn in place.  Only on a terminal, and only past a second of scanning."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.done = 0
        self.enabled = enabled and total > 1 and sys.stderr.isatty()
        self.started = time.monotonic()
        self.bar = None
        self.task = None
        self.shown = False

    def step(self, path: str) -> None:
        if not self.enabled:
            return
        if not self.shown and time.monotonic() - self.started > 1.0:
            self._start()
        if self.shown:
            self._draw(path)
        self.done += 1

    def _start(self) -> None:
        self.shown = True
        try:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)
        except ImportError:
            return
        self.bar = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.description}"),
                            transient=True)
        self.bar.start()
        self.task = self.bar.add_task("", total=self.total, completed=self.done)

    def _draw(self, path: str) -> None:
        name = os.path.basename(path)[-40:]
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, description=name)
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        sys.stderr.write(f"\rscanning [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} {name:40.40}")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.shown:
            return
        if self.bar is not None:
            self.bar.stop()
        else:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
