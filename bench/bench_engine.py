"""B1: engine overhead on the scripted backend, against a plain-Python loop.

Both sides simulate N conversations of `--turns` messages between two
participants (a simulated user and an assistant, each with its own system
prompt and view of the conversation) whose replies come from the same
deterministic rule: one of LINES, chosen by hashing the seed, the prompt length
and the prompt's last 32 token ids (the scripted backend's rule).

  turnloom  a Scenario run through `turnloom.api.run` with the scripted backend,
            no progress bar, writing its run directory (log, conversations,
            scores) as a user's run does; third-party plugins are not loaded.
            The batch size is the scripted backend's default (max_batch 128)
            unless --batch-size is given; one more row runs the large size at
            1024 requests per call, for comparison.
  turnloom-xN  the large size sharded over N local processes
            (`turnloom.distributed.run_processes`, --processes, default this
            machine's CPUs): wall clock is what it buys; its CPU time counts the
            children's, and its peak RSS is the driver's plus N times the
            largest child's (an upper bound).
  baseline-hf  what a user would write: lists of message dicts per conversation,
            the chat template rendered and tokenized over the full history every
            turn with transformers' `tokenizer.apply_chat_template`,
            asyncio.gather over all conversations, every conversation kept in
            memory (needs transformers; skipped without it).
  baseline  the same loop with the template compiled once and the Rust
            tokenizer called directly (jinja2 + tokenizers, the pieces
            `apply_chat_template` uses, same ids at ~2/3 of its cost): the
            fastest version of the loop, and the ratio the table reports first.

Each side runs in a fresh subprocess; peak RSS is its VmHWM (which sees Rust
allocations). turnloom runs at two sizes to show memory tracks the active
frontier, not the run size.

    .venv/bin/python bench/bench_engine.py                       # 100,000 conversations
    .venv/bin/python bench/bench_engine.py --plot docs/bench_engine.png   # and a figure
    .venv/bin/python bench/bench_engine.py --conversations 2000 --small 500
    .venv/bin/python bench/bench_engine.py --repeat 2    # each row the fastest of two rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import machine
from turnloom.backends.scripted import _TAIL, DEFAULT_LINES

MODEL = "smollm2-135m-instruct"
# The scripted backend answers at once, so its batch size only trades per-call overhead
# against keeping one batch's prompts, results and records in the CPU caches across the
# engine's passes over them. turnloom runs at the backend's default (None: its max_batch,
# 128) and, for comparison, at 1024 (the default before the sweep in bench/README.md).
BATCH_SIZE = None
COMPARE_BATCH_SIZE = 1024
PROCESSES = "turnloom-processes"  # the side sharded over local processes
TAIL = _TAIL  # the scripted backend hashes this many trailing prompt ids
LINES = DEFAULT_LINES  # the same reply rule on both sides
USER_PROMPT = "You are a curious student who asks short, concrete questions about programming."
ASSISTANT_PROMPT = "You are a helpful, concise tutor. Answer in one or two sentences."


# --- measurement ---------------------------------------------------------------------


def proc_status_bytes(key: str) -> int | None:
    """A memory line of /proc/self/status (VmHWM, VmRSS) in bytes; None without /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """VmHWM of this process (falls back to ru_maxrss)."""
    peak = proc_status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """VmRSS of this process now (0 without /proc)."""
    return proc_status_bytes("VmRSS") or 0


class RssSampler:
    """(seconds, RSS bytes) every `every_s` from a daemon thread, for the figure."""

    def __init__(self, every_s: float = 0.05) -> None:
        import threading

        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._t0, rss_bytes()))
            self._stop.wait(self.every_s)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._t0, rss_bytes()))
        return self.samples


def tokenizer_spec() -> str:
    """SmolLM2's chat format when its converted model is cached, else "bytes"."""
    from turnloom.models import is_prepared

    return MODEL if is_prepared() else "bytes"


# --- turnloom side ---------------------------------------------------------------------


def scenario(conversations: int, turns: int, tokenizer: str, batch_size: int | None = None) -> Any:
    from turnloom.config import BackendSpec, ParticipantSpec, RunSettings, Scenario

    return Scenario(
        run=RunSettings(name="bench-engine", conversations=conversations, max_turns=turns, seed=0,
                        batch_size=batch_size),
        # A batch size above the scripted backend's default max_batch needs it raised too.
        backends={"sim": BackendSpec(type="scripted", tokenizer=tokenizer,
                                     settings={"lines": list(LINES),
                                               **({"max_batch": batch_size} if batch_size else {})})},
        participants=(
            ParticipantSpec(name="user", agent="user-simulator", system_prompt=USER_PROMPT),
            ParticipantSpec(name="assistant", agent="assistant", system_prompt=ASSISTANT_PROMPT),
        ),
    )


def run_turnloom(conversations: int, turns: int, tokenizer: str,
                 batch_size: int | None = None, processes: int = 0) -> dict[str, Any]:
    """One engine run, or with `processes` one run sharded over that many local
    processes, whose CPU time (and peak RSS, see the docstring) joins this one's."""
    from turnloom.api import run
    from turnloom.distributed import run_processes

    sc = scenario(conversations, turns, tokenizer, batch_size)
    out = tempfile.mkdtemp(prefix="bench-engine-")
    try:
        t, c, kids = time.perf_counter(), time.process_time(), children_cpu()
        if processes:
            result = run_processes(sc, out=f"{out}/run", processes=processes, overwrite=True,
                                   progress=False)
        else:
            result = run(sc, out=f"{out}/run", overwrite=True, progress=False)
        seconds = time.perf_counter() - t
        cpu = time.process_time() - c + children_cpu() - kids
    finally:
        shutil.rmtree(out, ignore_errors=True)
    summary = result.summary
    # Requests per backend call, as the engine ran it.
    batch = summary["backends"]["sim"]["batch_size"]
    row = {"turns": summary["turns"], "seconds": seconds, "cpu": cpu, "batch": batch,
           "peak_active": summary["memory"]["peak_active_conversations"]}
    if processes:
        kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        row.update(processes=processes, children_peak_rss=processes * kib * 1024)
    return row


def children_cpu() -> float:
    """CPU seconds of this process's ended children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- baseline side ---------------------------------------------------------------------


def render_chatml_bytes(messages: list[dict[str, str]]) -> list[int]:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return list((text + "<|im_start|>assistant\n").encode("utf-8"))


def hf_renderer(tokenizer: str) -> Callable[[list[dict[str, str]]], list[int]]:
    """Full history -> prompt ids through transformers' apply_chat_template."""
    from transformers import AutoTokenizer

    from turnloom.models import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model(tokenizer)))

    def render(messages: list[dict[str, str]]) -> list[int]:
        # A list of ids, or a BatchEncoding holding them (newer transformers).
        ids: Any = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return render


def baseline_renderer(tokenizer: str, side: str = "baseline") -> Callable[[list[dict[str, str]]], list[int]]:
    """Full history -> prompt ids, re-tokenizing everything (as apply_chat_template does)."""
    if tokenizer == "bytes":
        return render_chatml_bytes
    if side == "baseline-hf":
        return hf_renderer(tokenizer)
    import tokenizers

    from turnloom.chat_template import compile_template, read_chat_template
    from turnloom.hf_tokenizer import SPECIAL_TOKEN_KEYS, read_json, token_content
    from turnloom.models import resolve_model

    path = resolve_model(tokenizer)
    tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    config = read_json(path / "tokenizer_config.json")
    specials = {k: v for k in SPECIAL_TOKEN_KEYS if (v := token_content(config.get(k)))}
    template = compile_template(read_chat_template(path) or "")

    def render(messages: list[dict[str, str]]) -> list[int]:
        text = template.render(messages=messages, add_generation_prompt=True, **specials)
        return tok.encode(text, add_special_tokens=False).ids
    return render


async def scripted_generate(prompt_ids: list[int], seed: int) -> str:
    await asyncio.sleep(0)  # a real backend call yields to the event loop
    return LINES[hash((seed, len(prompt_ids), tuple(prompt_ids[-TAIL:]))) % len(LINES)]


async def converse(index: int, turns: int, render: Callable[[list[dict[str, str]]], list[int]]) -> dict:
    """One conversation as two role-flipped message lists; the user simulator speaks first."""
    views = ([{"role": "system", "content": USER_PROMPT}],
             [{"role": "system", "content": ASSISTANT_PROMPT}])
    for turn in range(turns):
        me = turn % 2
        text = await scripted_generate(render(views[me]), index * 1_000 + turn)
        views[me].append({"role": "assistant", "content": text})
        views[1 - me].append({"role": "user", "content": text})
    return {"id": index, "messages": views[1]}


async def run_baseline_async(conversations: int, turns: int,
                             render: Callable[[list[dict[str, str]]], list[int]]) -> list[dict]:
    return await asyncio.gather(*(converse(i, turns, render) for i in range(conversations)))


def run_baseline(conversations: int, turns: int, tokenizer: str,
                 side: str = "baseline") -> dict[str, Any]:
    t, c = time.perf_counter(), time.process_time()
    render = baseline_renderer(tokenizer, side)
    results = asyncio.run(run_baseline_async(conversations, turns, render))
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    done = sum(len(r["messages"]) - 1 for r in results)
    return {"turns": done, "seconds": seconds, "cpu": cpu}


# --- driver ----------------------------------------------------------------------------


def run_side(side: str, conversations: int, turns: int, tokenizer: str,
             batch_size: int | None = None, trace: bool = False,
             processes: int = 0) -> dict[str, Any]:
    sampler = RssSampler() if trace else None
    if side == "turnloom":
        result = run_turnloom(conversations, turns, tokenizer, batch_size)
    elif side == PROCESSES:
        result = run_turnloom(conversations, turns, tokenizer, batch_size, processes)
    else:
        result = run_baseline(conversations, turns, tokenizer, side)
    if sampler is not None:
        result["rss_trace"] = sampler.stop()  # before the peak, which covers every sample
    # The kernel updates VmHWM lazily (per-thread RSS counters are folded in late), so
    # a sample of VmRSS can exceed it by a few pages: the peak covers both.
    sampled = max((b for _, b in result.get("rss_trace", ())), default=0)
    peak = max(peak_rss_bytes(), sampled) + result.pop("children_peak_rss", 0)
    result.update(side=side, conversations=conversations, peak_rss=peak)
    return result


BEFORE = "turnloom-before"


def checkout_python(rev: str) -> str:
    """`rev`'s Python package in a temporary folder, with this build's native core:
    the engine as it was, for a before/after row (valid while the Rust core is
    unchanged between the two)."""
    import glob
    import shutil
    import tempfile

    import turnloom

    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True, cwd=os.path.dirname(__file__)).stdout.strip()
    folder = tempfile.mkdtemp(prefix="turnloom-before-")
    archive = subprocess.run(["git", "archive", rev, "python"], capture_output=True, check=True,
                             cwd=root).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    for native in glob.glob(os.path.join(os.path.dirname(turnloom.__file__), "_core*.so")):
        shutil.copy(native, os.path.join(folder, "python", "turnloom"))
    return os.path.join(folder, "python")


def spawn(side: str, conversations: int, args: argparse.Namespace, tokenizer: str,
          batch_size: int | None = None) -> dict[str, Any]:
    env = {**os.environ}
    if side == BEFORE:
        env["PYTHONPATH"] = args.before_path
        row = spawn_side("turnloom", conversations, args, tokenizer, batch_size, env)
        row["side"] = BEFORE
        return row
    return spawn_side(side, conversations, args, tokenizer, batch_size, env)


def spawn_side(side: str, conversations: int, args: argparse.Namespace, tokenizer: str,
               batch_size: int | None, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--side", side, "--conversations", str(conversations),
               "--turns", str(args.turns), "--tokenizer", tokenizer]
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    if side == PROCESSES:
        command += ["--processes", str(args.processes)]
    if args.plot:
        command.append("--trace")
    # The engine alone: third-party plugins installed in the environment stay out.
    env = {**env, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_rounds(configs: list[tuple[str, int, int | None]], args: argparse.Namespace,
               tokenizer: str) -> list[list[dict[str, Any]]]:
    """Every (side, conversations, batch) once per round, `args.repeat` rounds: a slow
    spell of a shared machine hits the rows of a round alike."""
    return [[spawn(side, n, args, tokenizer, batch) for side, n, batch in configs]
            for _ in range(max(1, args.repeat))]


def fastest_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each row's fastest (CPU time) over the rounds."""
    return [min(runs, key=lambda row: row["cpu"]) for runs in zip(*rounds)]


def round_ratios(rounds: list[list[dict[str, Any]]], configs: list[tuple[str, int, int | None]],
                 target: tuple[str, int, int | None], baseline: str,
                 clock: str = "cpu") -> list[float]:
    """turnloom's turns per CPU second (`clock` "cpu") or per wall second
    ("seconds") over `baseline`'s, within each round."""
    if target not in configs:
        return []
    k = configs.index(target)
    b = next((i for i, c in enumerate(configs) if c[0] == baseline), None)
    if b is None:
        return []
    return [(r[k]["turns"] / r[k][clock]) / (r[b]["turns"] / r[b][clock]) for r in rounds]


def describe_ratios(ratios: list[float]) -> str:
    return (", ".join(f"{r:.1f}x" for r in ratios) + f" (median {statistics.median(ratios):.1f}x, "
            f"range {min(ratios):.1f}-{max(ratios):.1f}x)")


def print_table(rows: list[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    base = next(r for r in rows if r["side"] == "baseline")
    hf = next((r for r in rows if r["side"] == "baseline-hf"), None)
    base_wall, base_cpu = base["turns"] / base["seconds"], base["turns"] / base["cpu"]
    mib = 1 << 20
    out(f"{'side':<12}{'conversations':>14}{'turns':>10}{'wall s':>9}{'CPU s':>9}{'turns/s':>10}"
        f"{'turns/CPU s':>13}{'peak RSS MiB':>14}{'speed x':>9}{'CPU x':>8}{'RSS x':>8}"
        + (f"{'CPU x hf':>10}" if hf else "") + f"{'batch':>7}")
    for r in rows:
        wall, cpu = r["turns"] / r["seconds"], r["turns"] / r["cpu"]
        line = (f"{side_name(r):<12}{r['conversations']:>14,}{r['turns']:>10,}{r['seconds']:>9.2f}"
                f"{r['cpu']:>9.2f}{wall:>10,.0f}{cpu:>13,.0f}{r['peak_rss'] / mib:>14.1f}"
                f"{wall / base_wall:>8.1f}x{cpu / base_cpu:>7.1f}x{r['peak_rss'] / base['peak_rss']:>7.2f}x")
        if hf:
            line += f"{cpu / (hf['turns'] / hf['cpu']):>9.1f}x"
        out(line + f"{r.get('batch') or '-':>7}")
    out("speed x (wall clock), CPU x (process CPU time: fairer on a shared machine) and RSS x "
        "are against the baseline row" + ("; CPU x hf against the baseline-hf row" if hf else "")
        + "; batch: turnloom's requests per backend call"
        + ("; turnloom-xN: sharded over N processes, CPU s and peak RSS summed over them"
           if any(r["side"] == PROCESSES for r in rows) else ""))


def side_name(row: dict[str, Any]) -> str:
    return f"turnloom-x{row['processes']}" if row["side"] == PROCESSES else row["side"]


def label(row: dict[str, Any]) -> str:
    size = f"{row['conversations'] / 1000:g}k"
    return f"{side_name(row)} {size}" + (f", batch {row['batch']}" if row.get("batch") else "")


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Resident memory through each single-process run (time scaled to the run's
    length; a sharded row's children are not traced, its peak is in the table), and
    turns per CPU second and per wall second, two bars per row, each with its ratio
    to the baseline row on the same clock."""
    from turnloom.report.plots import pyplot

    try:
        plt = pyplot("figures (--plot)")
    except ImportError as exc:
        raise SystemExit(str(exc)) from None

    mib = 1 << 20
    fig, (memory, speed) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in rows:
        if r["side"] == PROCESSES:
            continue
        seconds, rss = zip(*r["rss_trace"])
        memory.plot([t / seconds[-1] for t in seconds], [b / mib for b in rss], label=label(r),
                    linestyle="-" if r["side"].startswith("turnloom") else "--")
    memory.set_xlabel("share of the run's wall time")
    memory.set_ylabel("resident memory (MiB)")
    memory.set_title("memory through the run")
    memory.legend(fontsize=8)

    base = next(r for r in rows if r["side"] == "baseline")
    width = 0.4
    for offset, clock, name, shade in ((-width / 2, "cpu", "per CPU second", 1.0),
                                       (width / 2, "seconds", "per wall second", 0.55)):
        rates = [r["turns"] / r[clock] for r in rows]
        base_rate = base["turns"] / base[clock]
        xs = [i + offset for i in range(len(rows))]
        speed.bar(xs, rates, width, alpha=shade, label=f"turns {name}",
                  color=["tab:blue" if r["side"].startswith("turnloom") else "tab:orange"
                         for r in rows])
        for x, rate in zip(xs, rates):
            speed.text(x, rate, f"{rate / base_rate:.1f}x", ha="center", va="bottom", fontsize=7)
    # Side, size and batch on lines of their own: on one line the labels overlap.
    names = [label(r).replace(", ", "\n").replace(" ", "\n", 1) for r in rows]
    speed.set_xticks(range(len(rows)), names, fontsize=7)
    speed.set_ylabel("turns per second")
    speed.set_title("throughput: CPU (solid) and wall clock (light), ratio to baseline")
    speed.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=20_000,
                        help="second, smaller turnloom run (0: skip) to show memory does not grow with N")
    parser.add_argument("--baseline-conversations", type=int, default=None,
                        help="baseline size (default: --conversations)")
    parser.add_argument("--turns", type=int, default=8, help="messages per conversation")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="turnloom's requests per backend call (run.batch_size; default: the "
                             "scripted backend's max_batch)")
    parser.add_argument("--compare-batch-size", type=int, default=COMPARE_BATCH_SIZE,
                        help="one more turnloom row at this batch size (0: none)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every row this many times, in rounds, and keep each row's "
                             "fastest (CPU time)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="one more row: the large size sharded over this many local "
                             "processes (default: this machine's CPUs; 0 or 1: none)")
    parser.add_argument("--no-hf", action="store_true",
                        help="skip the apply_chat_template baseline (the slowest row)")
    parser.add_argument("--plot", metavar="PNG",
                        help="also draw memory through each run and throughput (needs matplotlib)")
    parser.add_argument("--before", metavar="REV",
                        help="one more row: the turnloom engine of git revision REV (its Python "
                             "code with this build's native core), for a before/after comparison "
                             "in one run")
    parser.add_argument("--side", choices=("turnloom", PROCESSES, "baseline", "baseline-hf"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(run_side(args.side, args.conversations, args.turns, args.tokenizer,
                                  args.batch_size, args.trace, args.processes)))
        return

    tokenizer = tokenizer_spec()
    if tokenizer == "bytes":
        print(f"note: {MODEL} is not in the model cache (python -m turnloom.models prepare); "
              f"using the byte-level ChatML tokenizer")
    n_base = args.baseline_conversations or args.conversations
    print(machine.describe())
    print(f"{args.turns} messages per conversation, two participants, scripted replies, "
          f"tokenizer {tokenizer}", flush=True)
    configs: list[tuple[str, int, int | None]] = []
    if tokenizer != "bytes" and not args.no_hf:
        if has_transformers():
            configs.append(("baseline-hf", n_base, None))
        else:
            print("note: transformers is not installed; the baseline-hf row is skipped")
    configs.append(("baseline", n_base, None))
    sizes = sorted({n for n in (args.small, args.conversations) if 0 < n})
    configs += [("turnloom", n, args.batch_size) for n in sizes]
    if args.compare_batch_size and args.compare_batch_size != args.batch_size:
        configs.append(("turnloom", args.conversations, args.compare_batch_size))
    if args.processes > 1:
        configs.append((PROCESSES, args.conversations, args.batch_size))
    if args.before:
        args.before_path = checkout_python(args.before)
        configs.append((BEFORE, args.conversations, args.batch_size))
    rounds = run_rounds(configs, args, tokenizer)
    rows = fastest_rows(rounds)
    if args.repeat > 1:
        print(f"each row: the fastest (CPU time) of {args.repeat} rounds")
    print_table(rows)
    peaks = ", ".join(f"{r['conversations']:,}: {r['peak_active']:,}" for r in rows if r["side"] == "turnloom")
    print(f"turnloom peak active conversations (run size: peak): {peaks}")
    target = ("turnloom", args.conversations, args.batch_size)
    for baseline in ("baseline", "baseline-hf"):
        ratios = round_ratios(rounds, configs, target, baseline)
        if len(ratios) > 1:
            print(f"CPU x of turnloom {args.conversations:,} against {baseline}, round by round: "
                  f"{describe_ratios(ratios)}")
    if args.before:
        ratios = round_ratios(rounds, configs, target, BEFORE)
        print(f"turns per CPU second of turnloom {args.conversations:,} against the engine at "
              f"{args.before} ({BEFORE}), round by round: {describe_ratios(ratios)}")
    sharded = (PROCESSES, args.conversations, args.batch_size)
    for baseline in ("baseline", "baseline-hf"):
        ratios = round_ratios(rounds, configs, sharded, baseline, clock="seconds")
        if ratios:
            print(f"speed x (wall clock) of turnloom-x{args.processes} {args.conversations:,} "
                  f"against {baseline}, round by round: {describe_ratios(ratios)}")
    print(f"load average at the end: {machine.load()}")
    if args.plot:
        plot(rows, args.plot)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
