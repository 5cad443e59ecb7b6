"""The `turnloom` command line.

    turnloom run SCENARIO [--out DIR] [--overwrite] [--conversations N] [--seed S]
                          [--max-failures N|P%] [--debug]
                          [--ray ADDRESS [--shards N] [--shard-retries K] [--shard-options JSON]]
                          [--processes N [--shard-retries K]]
    turnloom resume RUN_DIR [--ray ADDRESS] [--max-failures N|P%] [--debug]
    turnloom validate SCENARIO
    turnloom show RUN_DIR [--conversation N [--branch B]] [--plain] [--json]
    turnloom plugins
    turnloom export RUN_DIR FORMAT [--set KEY=VALUE]... [--out FILE]
    turnloom report RUN_DIR [--out FILE] [--sample N]
    turnloom compare RUN_A RUN_B [--json FILE] [--html FILE] [--seed S] [--correction C]

Exit status: 0 done, 1 the run failed, 2 bad input (one line on stderr), 3 the run
finished but more conversations failed than its failure budget allows (run.max_failures,
--max-failures; 0 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

PROG = "turnloom"
EXIT_FAILURES = 3


class BadInput(Exception):
    """Reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`turnloom show RUN | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        bad = _bad_input(exc)
        if bad is not None:
            print(f"{PROG}: error: {bad}", file=sys.stderr)
            return 2
        if os.environ.get("TURNLOOM_DEBUG"):
            raise
        print(f"{PROG}: run failed: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Simulate multi-turn LLM "
                                     "conversations at scale.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a scenario file")
    p.add_argument("scenario", type=Path)
    p.add_argument("--out", type=Path, help="run directory (default: run.out, else runs/NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--conversations", type=_positive, help="override run.conversations")
    p.add_argument("--seed", type=_non_negative, help="override run.seed")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    _trust_options(p)
    p.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: its address "
                   "(HEAD_IP:6379, ray://HEAD_IP:10001, auto), or local to start one here; "
                   "--out must then be on storage every node sees")
    p.add_argument("--shards", type=_positive, help="with --ray: contiguous blocks of "
                   "conversations, one Ray actor each (default 2)")
    p.add_argument("--processes", type=_positive, metavar="N",
                   help="run in N shards of conversations, each in a process of this machine "
                   "(N: its CPUs, for the whole machine), merged into --out")
    p.add_argument("--shard-retries", type=_non_negative,
                   help="with --ray or --processes: restarts of a shard whose actor or process "
                   "died (default 3)")
    p.add_argument("--shard-options", type=_json_object, metavar="JSON",
                   help='with --ray: Ray options of each shard\'s actor, e.g. '
                   '\'{"resources": {"sglang": 1}}\' (default: {"num_cpus": 1}, spread over nodes)')
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("resume", help="finish an interrupted run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--no-progress", action="store_true")
    _trust_options(p)
    p.add_argument("--ray", metavar="ADDRESS", help="the Ray cluster that finishes a sharded "
                   "run (default: the executor it started on: RAY_ADDRESS or a local Ray for "
                   "Ray, this machine's processes for --processes)")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("validate", help="check a scenario file without running it")
    p.add_argument("scenario", type=Path)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("show", help="summarise a run directory and show one conversation")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print summary.json as it is")
    p.add_argument("--conversation", type=_non_negative, metavar="N",
                   help="the conversation index to show (default: the first that did not fail)")
    p.add_argument("--branch", type=_non_negative, metavar="B",
                   help="its branch (default 0)")
    p.add_argument("--plain", action="store_true",
                   help="plain text even in a terminal (it is plain in a pipe or file)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("plugins", help="list the installed plugins and their hooks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("export", help="write a dataset from a finished run directory")
    p.add_argument("run_dir", type=Path)
    p.add_argument("format", help="an exporter plugin, e.g. sft-tokens, dpo-pairs (see plugins)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="an exporter setting; VALUE is read as TOML, else as a string")
    p.add_argument("--out", type=Path, help="output file (default: in the run directory)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--sample", type=_non_negative, default=20,
                   help="conversations shown whole (default 20)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="per-metric differences between two runs")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--json", type=Path, help="also write the comparison as JSON")
    p.add_argument("--html", type=Path, help="also write the comparison as HTML")
    p.add_argument("--seed", type=_non_negative, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--resamples", type=_positive, default=2000)
    p.add_argument("--confidence", type=float, default=0.95,
                   help="family-wise confidence over every metric compared (default 0.95)")
    p.add_argument("--correction", choices=("bonferroni", "none"), default="bonferroni",
                   help="multiple-comparison correction of the intervals (default bonferroni; "
                        "none: each metric at --confidence on its own)")
    pairing = p.add_mutually_exclusive_group()
    pairing.add_argument("--paired", dest="paired", action="store_true", default=None,
                         help="pair by conversation (default when the runs share a scenario)")
    pairing.add_argument("--unpaired", dest="paired", action="store_false")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("probe", help="ask an OpenAI-compatible server what it is and "
                       "what it supports; print a table")
    p.add_argument("url", help="the API's base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="model name (default: the server's first)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.set_defaults(func=_cmd_probe)
    return parser


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-failures", type=_failure_budget, metavar="N|P%",
                   help="failed conversations allowed before the exit status says so: a "
                   "count or a percentage of the records (default: run.max_failures, 0)")
    p.add_argument("--debug", action="store_true",
                   help="raise a plugin's exception at once, with its traceback, instead of "
                   "recording it and going on")


def _failure_budget(text: str) -> Any:
    from turnloom.config import FailureBudget

    try:
        return FailureBudget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _bad_input(exc: BaseException) -> str | None:
    from turnloom.config import ScenarioError
    from turnloom.plugins import PluginError
    from turnloom.rundir import RunDirError

    if isinstance(exc, (ScenarioError, RunDirError, BadInput, PluginError)):
        return _one_line(str(exc))
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _plugins() -> tuple[Any, Any]:
    from turnloom.plugins import Registry, get_plugin_manager

    pm = get_plugin_manager()
    return pm, Registry.from_plugin_manager(pm)


# -- commands -------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from turnloom.api import run
    from turnloom.config import load_scenario

    _debug(args)
    pm, registry = _plugins()
    scenario = load_scenario(args.scenario, registry)
    scenario = scenario.with_run(conversations=args.conversations, seed=args.seed)
    budget = _budget(args, scenario.run.max_failures)
    executor = _executor(args, scenario.run.executor)
    if executor != "local":
        from turnloom.api import run_sharded

        overrides: dict[str, Any] = {"shards": args.processes or args.shards,
                                     "max_retries": args.shard_retries}
        if executor == "ray":
            overrides.update(address=args.ray, actor_options=args.shard_options)
        result = run_sharded(scenario, out=args.out, overwrite=args.overwrite,
                             progress=not args.no_progress, executor=executor, plugin_manager=pm,
                             scenario_file=str(args.scenario), **overrides)
        return _report(result, budget)
    result = run(scenario, out=args.out, overwrite=args.overwrite,
                 progress=not args.no_progress, plugin_manager=pm, scenario_file=str(args.scenario))
    return _report(result, budget)


def _debug(args: argparse.Namespace) -> None:
    from turnloom.errorlog import ENV_DEBUG

    if args.debug:  # through the environment, so that shard processes debug too
        os.environ[ENV_DEBUG] = "1"


def _budget(args: argparse.Namespace, configured: int | str) -> Any:
    from turnloom.config import FailureBudget

    return args.max_failures if args.max_failures is not None else FailureBudget.parse(configured)


def _executor(args: argparse.Namespace, default: str) -> str:
    """"ray", "processes" or "local", from the flags, else the scenario's."""
    if args.ray is not None and args.processes is not None:
        raise BadInput("--ray and --processes: choose one executor")
    executor = "ray" if args.ray is not None else (
        "processes" if args.processes is not None else default)
    if executor == "local":
        for option, value in (("--shards", args.shards), ("--shard-options", args.shard_options),
                              ("--shard-retries", args.shard_retries)):
            if value is not None:
                raise BadInput(f"{option} needs --ray ADDRESS or --processes N")
    elif executor == "processes":
        if args.shards is not None:
            raise BadInput("--shards: with --processes N, N is the number of shards")
        if args.shard_options is not None:
            raise BadInput("--shard-options: options of Ray actors; --processes starts none")
    return executor


def _cmd_resume(args: argparse.Namespace) -> int:
    from turnloom.api import resume

    _debug(args)
    if not args.run_dir.is_dir():
        raise BadInput(f"{args.run_dir} is not a directory")
    from turnloom import rundir
    from turnloom.distributed import is_sharded, resume_sharded

    configured = rundir.read_manifest(args.run_dir).get("scenario", {}).get("run", {}).get(
        "max_failures", 0)
    budget = _budget(args, configured)
    if is_sharded(args.run_dir):
        result = resume_sharded(args.run_dir, address=args.ray, progress=not args.no_progress)
        return _report(result, budget)
    if args.ray is not None:
        raise BadInput(f"--ray: {args.run_dir} was not run on Ray; resume it without --ray")
    pm, _ = _plugins()
    result = resume(args.run_dir, progress=not args.no_progress, plugin_manager=pm)
    return _report(result, budget)


def _report(result: Any, budget: Any) -> int:
    """Print the run's totals; the exit status: EXIT_FAILURES when more conversations
    failed than `budget` allows."""
    s = result.summary
    shards = f" ({s['sharding']['shards']} shards)" if "sharding" in s else ""
    print(f"{s['conversations']} conversations, {s['turns']} turns, {s['failures']} failed "
          f"-> {result.run_dir}{shards}")
    records = s.get("records", s["conversations"])
    if not budget.exceeded(s["failures"], records):
        return 0
    print(f"{PROG}: {s['failures']} of {records} conversations failed, over the failure "
          f"budget of {budget} (allows {budget.allowed(records)}); see `{PROG} show "
          f"{result.run_dir}`, or accept failures with --max-failures N or P%",
          file=sys.stderr)
    return EXIT_FAILURES


def _cmd_validate(args: argparse.Namespace) -> int:
    from turnloom.config import load_scenario

    from turnloom.plugins import hook_scope
    from turnloom.runtime import build_all

    pm, registry = _plugins()
    scenario = load_scenario(args.scenario, registry)
    build_all(scenario, registry)  # every factory sees its settings, as at run
    scope = hook_scope(pm, registry, scenario)
    names = ", ".join(f"{p.name} ({p.agent})" for p in scenario.participants)
    print(f"{args.scenario}: ok — {scenario.run.conversations} conversations x "
          f"{scenario.run.max_turns} turns; participants: {names}")
    from turnloom.show import hook_lines

    for line in hook_lines(scope.describe()):
        print(line)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from turnloom import rundir

    run_dir: Path = args.run_dir
    manifest = rundir.read_manifest(run_dir)
    summary_file = run_dir / rundir.SUMMARY
    if not summary_file.is_file():
        if "sharding" in manifest:
            from turnloom.distributed.status import describe_partial

            print(describe_partial(run_dir, manifest))
            return 0
        _show_partial(run_dir, manifest)
        return 0
    s = json.loads(summary_file.read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    if args.branch is not None and args.conversation is None:
        raise BadInput("--branch needs --conversation N")
    from turnloom.show import show

    show(run_dir, s, args.conversation, args.branch, rich=False if args.plain else None)
    return 0


def _show_partial(run_dir: Path, manifest: dict[str, Any]) -> None:
    from turnloom import rundir
    from turnloom.wal import TurnEvent, read_events

    turns = trees = 0
    ended: Counter[str] = Counter()
    per: Counter[int] = Counter()
    wal = run_dir / rundir.WAL
    if wal.is_file():
        for ev in read_events(wal, truncate=False):
            if isinstance(ev, TurnEvent):
                turns += 1
                per[ev.speaker] += 1
            else:
                ended[ev.stop_reason] += 1
                trees += ev.tree_done
    scenario = manifest.get("scenario", {})
    total = scenario.get("run", {}).get("conversations", "?")
    names = [p.get("name") for p in scenario.get("participants", [])]
    print(f"incomplete run in {run_dir}: {trees} of {total} conversations finished, "
          f"{turns} turns logged")
    for i, n in sorted(per.items()):
        print(f"    {names[i] if i < len(names) else i:<16} {n:>8} turns")
    if ended:
        print("  stop reasons: " + ", ".join(f"{k}: {v}" for k, v in sorted(ended.items())))
    print(f"  continue it with: {PROG} resume {run_dir}")


def _cmd_plugins(args: argparse.Namespace) -> int:
    from turnloom.plugins import KINDS, describe_plugins

    pm, registry = _plugins()
    rows = describe_plugins(pm)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        origin = " ".join(filter(None, (row.get("distribution"), row.get("version"))))
        print(f"{row['name']}" + (f"  [{origin}]" if origin else ""))
        if row.get("error"):
            print(f"    failed to load: {row['error']}")
        if row.get("hooks"):
            print(f"    hooks: {', '.join(row['hooks'])}")
    for kind in KINDS:
        print(f"{kind}: {', '.join(registry.names(kind)) or '-'}")
    for err in registry.errors:
        print(f"error: {err}")
    return 0


def _setting(text: str) -> tuple[str, Any]:
    import tomllib

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadInput(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


def _cmd_export(args: argparse.Namespace) -> int:
    from turnloom.exporters import export_run

    settings = dict(_setting(s) for s in args.settings)
    if args.out is not None:
        settings["file"] = str(args.out.resolve())
    pm, _ = _plugins()
    try:
        result = export_run(args.run_dir, args.format, settings, plugin_manager=pm)
    except ValueError as exc:
        raise BadInput(f"{args.format}: {exc}") from exc
    skipped = ", ".join(f"{k[len('skipped: '):]} {v}" for k, v in sorted(result.stats.items())
                        if k.startswith("skipped: "))
    print(f"{result.stats.get('rows', 0)} rows from {result.stats.get('records', 0)} records"
          + (f" (skipped: {skipped})" if skipped else "") + f" -> {result.path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from turnloom.report import write_report

    if not args.run_dir.is_dir():
        raise BadInput(f"{args.run_dir} is not a directory")
    print(write_report(args.run_dir, args.out, sample=args.sample))
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from turnloom.probe import run

    return run(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    from turnloom.export import atomic_write
    from turnloom.report.compare import compare_runs, format_html, format_table

    for d in (args.run_a, args.run_b):
        if not d.is_dir():
            raise BadInput(f"{d} is not a directory")
    try:
        c = compare_runs(args.run_a, args.run_b, paired=args.paired, resamples=args.resamples,
                         confidence=args.confidence, seed=args.seed,
                         correction=args.correction)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    print(format_table(c))
    if args.json is not None:
        atomic_write(args.json, json.dumps(c.to_json(), indent=2).encode() + b"\n")
    if args.html is not None:
        atomic_write(args.html, format_html(c).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
