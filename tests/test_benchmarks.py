"""The benchmarks in bench/ still run and print the rows they promise (tiny sizes,
no timing assertions), and B2's exact unique-token count is right."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, *args: str, env_extra: dict[str, str] | None = None) -> list[str]:
    env = {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1", **(env_extra or {})}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def table(lines: list[str], header_start: str) -> dict[str, list[str]]:
    """Rows after the header line, keyed by their first cell."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if not cells or not cells[1][0].isdigit():
            break
        rows.setdefault(cells[0], []).append(line)
    return rows


def number(cell: str) -> float:
    return float(cell.rstrip("x%").replace(",", ""))


def load_bench(name: str):
    """A bench script as a module (bench/ on the path, as when it runs as a script)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def load_prefix_bench():
    return load_bench("bench_prefix_reuse")


def test_prefix_reuse_table(tmp_path):
    figure = tmp_path / "b2.png"
    lines = run_bench("bench_prefix_reuse.py", "--conversations", "40", "--turns", "4",
                      "--branch-turn", "2", "--seed", "3", "--plot", str(figure))
    assert lines[-1] == f"figure: {figure}"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table(lines, "policy")
    assert list(rows) == ["naive", "lpm", "turnloom", "limit"]
    # The turnloom row runs the engine's admission policy, not a benchmark-tuned budget.
    (policy,) = [line for line in lines if line.startswith("turnloom:")]
    assert "token_budget = 1.000 x capacity, tree_reserve estimated" in policy
    assert "min_runnable 64, floor_trees 20 (64 / 3.25 mean branches)" in policy  # (1 + 3 x 4) / 4
    floor = number(rows["limit"][0].split()[1])
    for policy, (line,) in rows.items():
        cells = line.split()
        prefilled, hit = number(cells[1]), number(cells[3]) / 100
        assert prefilled >= floor, policy  # nothing beats an unbounded cache
        assert 0.0 <= hit <= 1.0
        assert number(cells[6]) == pytest.approx(number(cells[4]) + number(cells[5]), abs=0.11)


def test_prefix_reuse_unique_tokens_are_trie_nodes():
    bench = load_prefix_bench()
    shape = bench.Shape(turns=4, branch_turn=2, branches=3, system_len=(3, 6), user_len=(1, 3),
                        reply_len=(1, 3))
    bench.VOCAB_IDS = list(range(1_000, 1_004))  # a tiny vocabulary makes prefixes collide
    convs = bench.build_workload(12, shape, seed=5)
    unique, floor, prompt_tokens = bench.exact_unique_and_floor(convs, shape)

    client = bench.Client(convs, shape)
    prefixes: set[tuple[int, ...]] = set()
    requests = 0
    for conv in range(len(convs)):
        pending = [client.new(conv, -1, 1)]
        while pending:
            req = pending.pop()
            requests += 1
            seq = req.prompt + req.output
            prefixes.update(tuple(seq[:k]) for k in range(1, len(seq) + 1))
            pending.extend(client.follow_ups(req)[0])
    assert unique == len(prefixes)
    assert requests == 12 * (1 + 3 * 3)  # one trunk turn, then 3 branches x 3 turns
    assert 0 < floor <= prompt_tokens
    # The turnloom row's tree-size prior is an upper bound of every tree's real size.
    assert bench.workload_prior(shape) >= max(c.tokens() for c in convs) > 0


def test_prefix_reuse_trace_ends_at_the_totals():
    """The figure's curves: GPU time and prefilled tokens, rising to the row's totals."""
    bench = load_prefix_bench()
    shape = bench.Shape(turns=4, branch_turn=2, branches=2)
    convs = bench.build_workload(30, shape, seed=1)
    unique, _, _ = bench.exact_unique_and_floor(convs, shape)
    args = bench.argparse.Namespace(max_batch=8, output_reserve=256, starvation_limit=64,
                                    budget_fraction=1.0, tree_reserve=None, min_runnable=None,
                                    floor_trees=None, calls=None, max_inflight=2)
    for policy in ("naive", "turnloom"):
        result = bench.simulate(policy, convs, shape, args, unique // 10, bench.Cost())
        trace, row = result.server.trace, bench.row_of(result)
        assert trace[0] == (0.0, 0) and len(trace) > 3
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(trace, trace[1:]))
        assert trace[-1] == (pytest.approx(row.gpu_s), row.prefilled)


def test_roofline_costs_follow_the_bound_that_binds():
    bench = load_prefix_bench()
    gpu, model = bench.GPUS["h100"], bench.MODELS["llama3-8b"]
    cost = bench.Roofline(gpu, model, mfu=0.5, bandwidth_efficiency=0.8)
    read_weights_ms = 1000 * model.weight_bytes / (gpu.tbps * 1e12 * 0.8)
    # A decode step of one short request reads the weights: memory-bound.
    assert cost.step_ms([], 1, 10) == (0.0, pytest.approx(read_weights_ms, rel=1e-3))
    # Each request of the batch adds its KV reads; 64 x 1,000 tokens of context.
    kv_ms = 1000 * 64_000 * model.kv_bytes_per_token / (gpu.tbps * 1e12 * 0.8)
    assert cost.step_ms([], 64, 64_000)[1] == pytest.approx(read_weights_ms + kv_ms)
    # A long prefill is compute-bound: 2 x params FLOPs per token plus attention.
    prefill, _ = cost.step_ms([(20_000, 0)], 1, 20_000)
    flops = 2 * model.params * 20_000 + model.attention_flops_per_key * 20_000 * 20_001 / 2
    assert prefill == pytest.approx(1000 * flops / (gpu.tflops * 1e12 * 0.5))
    assert prefill > read_weights_ms * 5
    # A short prefill still reads every weight in its own pass, but hides under
    # the decode step's memory time when mixed into it.
    short = [(40, 900)]
    alone, decode = cost.step_ms(short, 64, 64_000)
    mixed, mixed_decode = bench.Roofline(gpu, model, mixed=True).step_ms(short, 64, 64_000)
    assert alone >= read_weights_ms and mixed_decode == decode
    assert 0.0 <= mixed < 0.05 * alone
    # Cached tokens cost the attention to them, far less than prefilling them.
    after_cache = cost.step_ms([(10_000, 5_000)], 1, 0)[0]
    assert cost.step_ms([(10_000, 0)], 1, 0)[0] < after_cache < 0.8 * cost.step_ms([(15_000, 0)], 1, 0)[0]


@pytest.mark.parametrize("cost_name", ["linear", "roofline", "roofline mixed"])
def test_prefix_reuse_limit_bounds_every_policy(cost_name):
    """The limit row is a lower bound of every policy's modelled time, and every
    order of the same requests reads the same KV (the decode bound relies on it)."""
    bench = load_prefix_bench()
    shape = bench.Shape(turns=4, branch_turn=2, branches=3)
    convs = bench.build_workload(40, shape, seed=2)
    unique, floor, prompt_tokens = bench.exact_unique_and_floor(convs, shape)
    cost = (bench.Cost() if cost_name == "linear" else
            bench.Roofline(bench.GPUS["h100"], bench.MODELS["llama3-8b"], mixed="mixed" in cost_name))
    args = bench.argparse.Namespace(max_batch=16, output_reserve=256, starvation_limit=64,
                                    budget_fraction=1.0, tree_reserve=None, min_runnable=None,
                                    floor_trees=None, calls=None, max_inflight=2)
    client = bench.Client(convs, shape)
    expected_reads = 0
    for conv in range(len(convs)):
        pending = [client.new(conv, -1, 1)]
        while pending:
            req = pending.pop()
            out, prompt = len(req.output), len(req.prompt)
            expected_reads += out * prompt + out * (out - 1) // 2  # prompt + k at the k-th token
            pending.extend(client.follow_ups(req)[0])
    for policy, calls in (("naive", None), ("lpm", None), ("turnloom", None), ("turnloom", 4)):
        # turnloom by free slot, then as the engine dispatches: calls of 4, 2 outstanding
        args.calls = calls
        result = bench.simulate(policy, convs, shape, args, unique // 10, cost)
        server = result.server
        assert result.extra["requests"] == client.requests
        if calls:
            assert client.requests / 4 <= result.extra["calls"] < client.requests
        assert server.context_reads == expected_reads, policy
        assert server.context == 0  # every finished request gave its context back
        limit = bench.limit_row(floor, prompt_tokens, server, cost)
        row = bench.row_of(bench.Result(policy, server, 0.0, {}))
        assert limit.gpu_s <= row.gpu_s * (1 + 1e-9), policy
        assert limit.decode_s <= row.decode_s * (1 + 1e-9), policy


def test_prefix_reuse_sweep_table():
    lines = run_bench("bench_prefix_reuse.py", "--conversations", "30", "--turns", "4",
                      "--branch-turn", "2", "--cost", "roofline", "--mixed-prefill",
                      "--sweep-batch", "8,32")
    assert "roofline of Llama-3.1-8B on H100 SXM" in lines[1] and "decode step's pass" in lines[1]
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["batch", "policy"])
    rows = [line.split() for line in lines[start + 1:start + 9]]
    assert [(r[0], r[1]) for r in rows] == [(b, p) for b in ("8", "32")
                                            for p in ("naive", "lpm", "turnloom", "limit")]
    # batch, policy, prefilled, /unique, hit rate, prefill s, decode s, GPU s, speedup, avg batch
    for batch in (rows[:4], rows[4:]):
        assert number(batch[0][8]) == 1.0  # speed-ups against naive at the same batch
        limit_gpu = number(batch[3][7])
        assert all(limit_gpu <= number(r[7]) for r in batch[:3])
    assert number(rows[4][7]) < number(rows[0][7])  # larger batches take less GPU time


@pytest.mark.parametrize("model_cache", ["as is", "empty"])
def test_engine_table(model_cache, tmp_path):
    env = {"TURNLOOM_CACHE": str(tmp_path)} if model_cache == "empty" else None
    figure = tmp_path / "b1.png"
    repeat = ["--repeat", "2"] if model_cache == "empty" else []
    lines = run_bench("bench_engine.py", "--conversations", "40", "--small", "20",
                      "--baseline-conversations", "20", "--turns", "4", "--plot", str(figure),
                      "--processes", "2", *repeat, env_extra=env)
    assert lines[-1] == f"figure: {figure}"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if model_cache == "empty":
        assert lines[0].startswith("note:") and lines[1].startswith("machine: ")
        assert "tokenizer bytes" in lines[2]
    assert ("each row: the fastest (CPU time) of 2 rounds" in lines) == bool(repeat)
    paired = [line for line in lines if line.startswith("CPU x of turnloom 40 against baseline,")]
    assert len(paired) == bool(repeat)  # a ratio per round needs rounds
    if repeat:
        assert "round by round: " in paired[0] and "(median " in paired[0]
    sharded = [line for line in lines
               if line.startswith("speed x (wall clock) of turnloom-x2 40 against baseline,")]
    assert len(sharded) == 1  # every round has both rows, so a ratio even without --repeat
    assert lines[-2].startswith("load average at the end: ")
    rows = table(lines, "side")
    # With the model files, the apply_chat_template loop runs too (transformers is in the
    # hf extra that set-up installs); the byte-level fallback has no HF tokenizer.
    expected = ["baseline", "turnloom"] if model_cache == "empty" else ["baseline-hf", "baseline", "turnloom"]
    assert list(rows) == [*expected, "turnloom-x2"]
    # Two sizes at the benchmark's batch size, then the large one at the scripted
    # backend's own max_batch (the last column), then the large one over two processes.
    assert [line.split()[-1] for line in rows["turnloom"]] == ["128", "128", "1024"]
    assert [line.split()[:3] for line in rows["turnloom-x2"]] == [["turnloom-x2", "40", "160"]]
    for line in [line for side in [*expected, "turnloom-x2"] for line in rows[side]]:
        cells = line.split()
        conversations, turns = number(cells[1]), number(cells[2])
        assert turns == conversations * 4  # every conversation ran all its turns
        assert number(cells[5]) > 0 and number(cells[7]) > 0  # turns/s, peak RSS


def test_engine_sharded_side_counts_its_children():
    """The processes row's CPU time and peak RSS include its children's."""
    import json

    (line,) = run_bench("bench_engine.py", "--side", "turnloom-processes", "--processes", "2",
                        "--conversations", "300", "--turns", "4", "--tokenizer", "bytes")[-1:]
    row = json.loads(line)
    assert row["turns"] == 1200 and row["processes"] == 2
    # Start-up dominates at this size, and the driver and each child start the same
    # engine: about three processes' worth of CPU and memory against one.
    (single,) = run_bench("bench_engine.py", "--side", "turnloom", "--conversations", "300",
                          "--turns", "4", "--tokenizer", "bytes")[-1:]
    alone = json.loads(single)
    assert row["cpu"] > 1.8 * alone["cpu"] and row["peak_rss"] > 2 * alone["peak_rss"]


def test_engine_baselines_render_the_same_prompts():
    """The two baseline loops differ in cost only: same ids as apply_chat_template."""
    bench = load_bench("bench_engine")
    if bench.tokenizer_spec() == "bytes":
        pytest.fail("the embedded model is not prepared (scripts/setup.sh prepares it)")
    hf = bench.baseline_renderer(bench.MODEL, "baseline-hf")
    compiled = bench.baseline_renderer(bench.MODEL, "baseline")
    messages = [{"role": "system", "content": bench.USER_PROMPT}]
    for k, line in enumerate(bench.LINES[:5]):
        messages.append({"role": "user" if k % 2 == 0 else "assistant", "content": line})
        assert hf(messages) == compiled(messages)


def test_engine_side_traces_memory():
    """--trace samples resident memory through the run, never above the peak reported."""
    import json

    (line,) = run_bench("bench_engine.py", "--side", "turnloom", "--conversations", "300",
                        "--turns", "4", "--tokenizer", "bytes", "--trace")[-1:]
    row = json.loads(line)
    times = [t for t, _ in row["rss_trace"]]
    assert len(times) >= 2 and times == sorted(times)
    assert 0 < max(b for _, b in row["rss_trace"]) <= row["peak_rss"]


def _profile_engine():
    return load_bench("profile_engine")


def test_profile_engine_table():
    lines = run_bench("profile_engine.py", "--conversations", "60", "--turns", "4",
                      "--repeat", "1", "--tokenizer", "bytes")
    header = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
    names = [line[:14].strip() for line in lines[header + 1:header + 5]]
    assert names == ["as shipped", "- exports", "- log", "- records"]
    for line in lines[header + 1:header + 5]:
        assert number(line[14:28]) > 0  # microseconds per turn


def test_profile_engine_layers_switch_off(tmp_path):
    """Each layer switched off writes nothing of its own, and the run still ends."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_engine, profile_engine\n"
        "from turnloom.api import run\n"
        "for layer in sys.argv[3].split(','): profile_engine.switch_off(layer)\n"
        "r = run(bench_engine.scenario(30, 4, 'bytes'), out=sys.argv[2], progress=False)\n"
        "print(r.summary['turns'])\n")
    from turnloom.wal import read_events

    for off in ("exports", "exports,log", "exports,log,records"):
        out = tmp_path / off.replace(",", "-")
        done = subprocess.run([sys.executable, "-c", code, str(BENCH), str(out), off],
                              capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[-1] == "120"
        assert not (out / "conversations.jsonl").read_text()
        events = list(read_events(out / "turns.wal", truncate=False))
        assert len(events) == (0 if "log" in off else 120 + 30)  # turns, then ends
    with pytest.raises(ValueError, match="unknown layer"):
        _profile_engine().switch_off("exporters")


def test_profile_engine_counts_bytecodes_exactly():
    """Bytecode counts repeat: two runs of the same size agree (to the few bytecodes of
    the log's timed fsyncs), and the per-turn figures (a run less one of a tenth its
    size) sum over functions and lines."""
    import argparse

    module = _profile_engine()
    args = argparse.Namespace(conversations=40, turns=4)
    first = module.bytecodes_per_turn(args, "bytes")
    second = module.bytecodes_per_turn(args, "bytes")
    total = sum(first.values())
    assert sum(second.values()) == pytest.approx(total, rel=0.01)
    engine = {k: v for k, v in first.items() if k.startswith("turns.py:") and "_apply" in k}
    assert engine and all(second.get(k) == pytest.approx(v, rel=0.01) for k, v in engine.items())
    assert 100 < total < 100_000  # hundreds of bytecodes a turn, start-up cancelled
    functions = module.by_function(first)
    assert sum(functions.values()) == pytest.approx(total)
    assert any(name.startswith("turns.py ") for name in functions)
    out: list[str] = []
    module.print_bytecodes(first, 3, out.append)
    assert out[0] == f"bytecodes per turn: {total:,.0f}"
    assert out[1].endswith("function") and out[5].endswith("line")
    assert len(out) == 1 + 2 * (1 + 3)


def test_profile_engine_bytecodes_by_function():
    module = _profile_engine()
    assert module.by_function({"engine.py:10 _apply": 2.0, "engine.py:12 _apply": 3.0,
                               "wal.py:5 append": 1.0}) == {"engine.py _apply": 5.0,
                                                            "wal.py append": 1.0}


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_profile_engine_counts_instructions_per_turn():
    import argparse

    module = _profile_engine()
    args = argparse.Namespace(conversations=20, turns=4)
    per_turn = module.instructions_per_turn([], args, "bytes")
    # Start-up cancels out: what is left is tens of thousands of instructions a turn.
    assert 10_000 < per_turn < 1_000_000


def test_engine_rows_keep_the_fastest_round(monkeypatch):
    """--repeat runs every row once per round and keeps each row's fastest CPU time."""
    import argparse

    bench = load_bench("bench_engine")
    cpu = iter([3.0, 9.0, 1.0, 5.0, 2.0, 7.0])  # rounds of (baseline, turnloom)
    calls = []

    def fake_spawn(side, n, args, tokenizer, batch=None):
        calls.append(side)
        return {"side": side, "cpu": next(cpu)}

    monkeypatch.setattr(bench, "spawn", fake_spawn)
    rounds = bench.run_rounds([("baseline", 10, None), ("turnloom", 10, 128)],
                              argparse.Namespace(repeat=3), "bytes")
    assert calls == ["baseline", "turnloom"] * 3
    rows = bench.fastest_rows(rounds)
    assert [(r["side"], r["cpu"]) for r in rows] == [("baseline", 1.0), ("turnloom", 5.0)]


def test_engine_ratios_pair_each_round():
    """The round-by-round ratio divides rows of the same round, not the fastest of each."""
    bench = load_bench("bench_engine")
    configs = [("baseline", 10, None), ("turnloom", 10, 128), ("turnloom", 10, 1024)]

    def row(cpu):
        return {"turns": 100, "cpu": cpu}

    # The fastest rows (baseline 1.0 s, turnloom 0.1 s) come from different rounds.
    rounds = [[row(1.0), row(0.2), row(0.5)], [row(4.0), row(0.1), row(0.5)],
              [row(2.0), row(0.1), row(0.5)]]
    ratios = bench.round_ratios(rounds, configs, ("turnloom", 10, 128), "baseline")
    assert ratios == pytest.approx([5.0, 40.0, 20.0])
    assert bench.describe_ratios(ratios) == "5.0x, 40.0x, 20.0x (median 20.0x, range 5.0-40.0x)"
    assert bench.describe_ratios([2.0, 4.0]).endswith("(median 3.0x, range 2.0-4.0x)")
    assert bench.round_ratios(rounds, configs, ("turnloom", 10, 128), "baseline-hf") == []
    assert bench.round_ratios(rounds, configs, ("turnloom", 99, 128), "baseline") == []


def test_machine_line_names_the_code_and_the_load():
    machine = load_bench("machine")
    line = machine.describe()
    assert line.startswith("machine: ")
    assert f"{os.cpu_count()} logical CPUs" in line
    head = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    if head:  # a git checkout: the commit is named
        assert f"turnloom at {head}" in line
    assert "load average" in line

def test_core_table():
    """bench_core.py runs its three variants and prints a row per operation."""
    lines = run_bench("bench_core.py", "--nodes", "800")
    header = next(i for i, line in enumerate(lines) if line.startswith("operation"))
    names = [line.split()[0] for line in lines[header + 1:header + 6]]
    assert names == ["append", "lanes", "scheduler", "free", "total"]
    for line in lines[header + 1:header + 6]:
        cells = line.split()
        # name, "(s)", python, packed, ratio, list API, ratio
        assert cells[1] == "(s)" and number(cells[2]) >= 0
        assert cells[4].endswith("x") and cells[6].endswith("x")
