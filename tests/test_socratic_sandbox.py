"""The sandbox: tests run in a separate, limited process; hostile code is contained."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from turnloom_socratic.sandbox import Limits, run_tests, unshare_prefix

CASES = [([2], 4), ([3], 6)]


def run(body: str, limits: Limits | None = None, prelude: str = ""):
    code = f"{prelude}\ndef f(x):\n" + "".join(f"    {line}\n" for line in body.splitlines())
    return run_tests(code, "f", CASES, limits)


def test_passing_and_failing_tests_are_counted() -> None:
    ok = run("return 2 * x")
    assert (ok.status, ok.passed, ok.failed, ok.all_passed) == ("ok", 2, 0, True)
    half = run("return 4")
    assert (half.status, half.passed, half.failed, half.all_passed) == ("ok", 1, 1, False)
    assert half.errors == ("returned 4, expected 6",)


def test_syntax_errors_and_exceptions_are_crashes_or_failures() -> None:
    broken = run_tests("def f(x)\n    return x\n", "f", CASES)
    assert broken.status == "crash" and broken.failed == 2
    assert "SyntaxError" in broken.errors[0]
    raising = run("raise KeyError('boom')")
    assert raising.status == "ok" and raising.failed == 2 and "KeyError" in raising.errors[0]
    gone = run("return 2 * x", prelude="import os\nos._exit(0)")
    assert gone.status == "crash" and gone.passed == 0


def test_infinite_loop_times_out() -> None:
    result = run("while True:\n    pass", Limits(wall_s=1.0, cpu_s=10))
    assert result.status == "timeout" and result.passed == 0
    assert 1.0 <= result.wall_s < 5.0


def test_cpu_limit_stops_a_busy_process() -> None:
    result = run("while True:\n    pass", Limits(wall_s=20.0, cpu_s=1))
    assert result.status == "timeout"
    assert result.wall_s < 10.0  # RLIMIT_CPU, not the wall clock, ended it


def test_fork_bomb_is_refused() -> None:
    result = run("import os\nwhile True:\n    os.fork()")
    assert result.status == "forbidden"
    assert any(v.startswith("os.fork") for v in result.violations)
    spawn = run("import subprocess\nsubprocess.run(['sleep', '100'])\nreturn 2 * x")
    assert spawn.status == "forbidden"


def test_huge_output_is_truncated() -> None:
    limits = Limits(output_bytes=10_000)
    result = run("while True:\n    print('x' * 1000)", limits)
    assert result.status == "output_truncated"
    assert len(result.stdout) <= 10_000
    assert result.output_bytes > 10_000


def test_huge_memory_is_refused() -> None:
    limits = Limits(memory_mb=256)
    big = run("data = bytearray(8 * 1024 ** 3)\nreturn 2 * x", limits)
    assert big.status == "memory" and big.passed == 0
    growing = run("chunks = []\nwhile True:\n    chunks.append(' ' * 10 ** 7)", limits)
    assert growing.status == "memory"


def test_writes_outside_the_private_directory_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    result = run(f"open({str(target)!r}, 'w').write('hi')\nreturn 2 * x")
    assert result.status == "forbidden" and not target.exists()
    removal = tmp_path / "keep.txt"
    removal.write_text("keep")
    result = run(f"import os\nos.remove({str(removal)!r})\nreturn 2 * x")
    assert result.status == "forbidden" and removal.exists()
    inside = run("open('scratch.txt', 'w').write('ok')\nreturn 2 * x")
    assert inside.status == "ok" and inside.all_passed


def test_private_directory_is_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    result = run("import os\nopen('left.txt', 'w').write(os.getcwd())\nreturn 2 * x")
    assert result.all_passed
    assert list(tmp_path.iterdir()) == []


def test_file_size_limit() -> None:
    result = run("open('big.bin', 'wb').write(b'0' * 5_000_000)\nreturn 2 * x",
                 Limits(file_size_bytes=100_000))
    assert result.passed == 0 and "File too large" in result.errors[0]


@pytest.mark.parametrize("network", ["audit", "auto"])
def test_sockets_are_refused(network: str) -> None:
    result = run("import socket\nsocket.create_connection(('127.0.0.1', 9))\nreturn 2 * x",
                 Limits(network=network))
    assert result.status == "forbidden"
    assert any(v.startswith("socket.") for v in result.violations)
    assert result.network_isolation == ("audit" if network == "audit" or unshare_prefix() is None
                                        else "unshare+audit")


@pytest.mark.skipif(unshare_prefix() is None, reason="no network namespaces on this machine")
def test_network_namespace_has_only_loopback() -> None:
    # /proc/self/net/dev lists the interfaces of the reader's own network namespace.
    code = ("def f(x):\n    with open('/proc/self/net/dev') as f:\n"
            "        rows = f.read().splitlines()[2:]\n"
            "    return sorted(r.split(':')[0].strip() for r in rows)\n")
    inside = run_tests(code, "f", [([0], ["lo"])], Limits(network="unshare"))
    assert inside.all_passed, inside.errors
    with open("/proc/self/net/dev") as f:
        here = sorted(r.split(":")[0].strip() for r in f.read().splitlines()[2:])
    shared = run_tests(code, "f", [([0], here)], Limits(network="audit"))
    assert shared.all_passed, shared.errors  # without the namespace: this machine's interfaces


def test_the_test_process_is_unharmed() -> None:
    before = resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_NPROC)
    run("import os\nwhile True:\n    os.fork()")
    run("data = bytearray(8 * 1024 ** 3)", Limits(memory_mb=128))
    after = resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_NPROC)
    assert before == after
    assert run("return 2 * x").all_passed


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="wall_s"):
        Limits(wall_s=0)


# -- code that tries to game the tests -------------------------------------------------

ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
"""


def test_an_object_equal_to_everything_does_not_pass() -> None:
    result = run("return Anything()", prelude=ALWAYS_EQUAL)
    assert result.passed == 0 and result.failed == 2
    assert "Anything" in result.errors[0]


def test_a_list_subclass_equal_to_everything_does_not_pass() -> None:
    prelude = "class Sly(list):\n    def __eq__(self, other):\n        return True\n"
    result = run_tests(prelude + "def f(x):\n    return Sly([0])\n", "f", [([1], [2])])
    assert result.passed == 0, result.errors


def test_expected_values_never_reach_the_child() -> None:
    # Whatever the code finds in its process (the spec, its arguments, the call stack,
    # every object the collector tracks), the expected value is not among them.
    secret = "expected-value-7f3a9c"
    body = ("import gc, sys\n"
            "seen = []\n"
            "for o in gc.get_objects():\n"
            "    try:\n"
            "        seen.append(repr(o)[:10000])\n"
            "    except Exception:\n"
            "        pass\n"
            "frame = sys._getframe()\n"
            "while frame is not None:\n"
            "    seen.append(repr(frame.f_locals)[:10000])\n"
            "    frame = frame.f_back\n"
            # the needle is built only now, so it is not among what was collected
            f"needle = {secret[::-1]!r}[::-1]\n"
            "return any(needle in s for s in seen)\n")
    result = run_tests("def f(x):\n" + "".join(f"    {ln}\n" for ln in body.splitlines()),
                       "f", [([1], secret)])
    assert result.status == "ok" and result.passed == 0
    assert "returned False" in result.errors[0]


def test_reading_the_spec_or_files_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "answers.txt"
    outside.write_text("6")
    result = run(f"return int(open({str(outside)!r}).read())")
    assert result.status == "forbidden" and result.passed == 0
    assert any("read" in v for v in result.violations), result.violations
    spec = run("import sys, os\nreturn open(os.path.join('..', 'spec.json')).read()")
    assert spec.status == "forbidden"
    listing = run("import os\nreturn len(os.listdir('/'))")
    assert listing.status == "forbidden"
    home = run("import os\nreturn len(os.listdir(os.path.expanduser('~root')))")
    assert home.status == "forbidden"


def test_standard_library_imports_still_work() -> None:
    code = ("import json, collections, itertools, fractions\n"
            "def f(x):\n    return json.loads(json.dumps([x, x]))\n")
    result = run_tests(code, "f", [([3], [3, 3])])
    assert result.all_passed, (result.status, result.errors, result.violations)


def test_forged_result_events_do_not_count() -> None:
    # The code can write to the result channel itself; a second result for a test
    # (a guess at the expected value) makes the run forbidden instead of passing.
    # Every descriptor a child may have is tried: the channel's number depends on what
    # the parent has open.
    body = ("import os, json\n"
            "for fd in range(3, 1024):\n"
            "    try:\n"
            "        for guess in (4, 6):\n"
            "            os.write(fd, (json.dumps({'event': 'test', 'index': 0, 'value': guess})"
            " + '\\n').encode())\n"
            "    except OSError:\n"
            "        pass\n"
            "return -1\n")
    result = run(body)
    assert result.passed == 0 and result.status == "forbidden"


def test_results_that_are_not_plain_data_fail() -> None:
    result = run_tests("def f(x):\n    return {1, 2}\n", "f", [([0], [1, 2])])
    assert result.passed == 0 and "set" in result.errors[0]
    tuples = run_tests("def f(x):\n    return (x, [x])\n", "f", [([1], [1, [1]])])
    assert tuples.all_passed  # tuples still compare as lists
    floats = run_tests("def f(x):\n    return 0.1 + 0.2\n", "f", [([0], 0.3)])
    assert floats.all_passed
    booleans = run_tests("def f(x):\n    return 1\n", "f", [([0], True)])
    assert booleans.passed == 0  # 1 is not True
