"""Shards in local processes: all of a machine's cores without a cluster.

Each shard runs in a child process (`python -m turnloom.distributed.process_shards
FD`) that reads its job from stdin, runs or resumes the shard with the ordinary
engine, and writes JSON lines to the pipe FD: its totals as it goes, then its
summary. Its stdout and stderr are passed on to the driver's stderr, each line
led by the shard's directory; the last lines are kept to say why a child died.
A child that dies is started again and resumes from the shard's log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from turnloom.distributed.plan import shard_path
from turnloom.distributed.runner import ShardRunner, ShardStatus
from turnloom.distributed.walcount import Counts

REPORT_S = 0.1  # how often a child reports its totals
_TAIL_LINES = 20
_STOP_WAIT_S = 10.0


class _Child:
    """One child process and the threads that read its two outputs."""

    def __init__(self, st: ShardStatus, command: list[str], job: dict[str, Any]) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(command + [str(write_fd)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         pass_fds=(write_fd,))  # inherits this environment
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.outcome: dict[str, Any] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._threads = [
            threading.Thread(target=self._read_reports, args=(st, os.fdopen(read_fd, "rb")),
                             daemon=True),
            threading.Thread(target=self._pass_output, args=(st.shard.dir, self.proc.stdout),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job).encode())
            self.proc.stdin.close()
        except OSError:  # it died before reading its job: seen when it is collected
            pass

    def _read_reports(self, st: ShardStatus, pipe: IO[bytes]) -> None:
        with pipe:
            for line in pipe:
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if "counts" in report:
                    st.counts = Counts(**report["counts"])
                else:
                    self.outcome = report

    def _pass_output(self, name: str, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.tail.append(line)
                    print(f"{name}: {line}", file=sys.stderr, flush=True)

    def join(self) -> None:
        reports, output = self._threads
        reports.join()
        output.join(_STOP_WAIT_S)  # a lingering grandchild may hold the output open

    def stop(self) -> None:
        """End the child (it resumes from its log if started again)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.join()


class ProcessShards(ShardRunner):
    """A child process per shard, all running at once."""

    kind = "process"

    def _start(self, st: ShardStatus) -> None:
        st.attempts += 1
        job = {"shard_dir": str(shard_path(self.run_dir, st.shard)),
               "scenario": st.shard.scenario(self.scenario).to_dict()}
        command = [sys.executable, "-m", "turnloom.distributed.process_shards"]
        child = _Child(st, command, job)
        st.actor = child
        st.where = {"pid": child.proc.pid, "host": socket.gethostname(), "node_ip": "127.0.0.1"}

    def _stop(self, st: ShardStatus) -> None:
        if st.actor is not None:
            st.actor.stop()
            st.actor = None

    def _collect(self, running: list[ShardStatus]) -> None:
        """Wait up to poll_s for children to exit; take their summaries or retry them."""
        deadline = time.monotonic() + self.poll_s
        while True:
            ended = [st for st in running if st.actor.proc.poll() is not None]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(min(0.02, self.poll_s))
        for st in ended:
            child: _Child = st.actor
            child.join()  # its last report is read
            if child.outcome is not None:
                self._finished(st, child.outcome["summary"], child.outcome["cpu_s"])
            else:
                self._died(st, _exit_text(child.proc.returncode),
                           child.tail[-1] if child.tail else "no output")

    def _poll(self, statuses: list[ShardStatus]) -> None:
        pass  # the children's reports update their counts as they arrive


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _child_main(argv: list[str]) -> None:
    from turnloom.distributed.worker import run_shard

    report = os.fdopen(int(argv[0]), "w", buffering=1)
    job = json.load(sys.stdin)
    last = 0.0

    def send(message: dict[str, Any]) -> None:
        try:
            report.write(json.dumps(message) + "\n")
        except OSError:
            pass  # the driver is gone; the shard's files still count when it resumes

    def on_progress(counts: dict[str, int]) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= REPORT_S:
            last = now
            send({"counts": counts})

    try:
        outcome = asyncio.run(run_shard(Path(job["shard_dir"]), job["scenario"], "127.0.0.1",
                                        on_progress))
    except KeyboardInterrupt:  # Ctrl-C reaches the driver too; the shard resumes from its log
        sys.exit(130)
    send(outcome)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
