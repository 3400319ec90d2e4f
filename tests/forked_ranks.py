"""Runs tests/finetune_probe.py on several ranks forked from one process that has imported the
training stack once (torch, transformers, DeepSpeed, finetune: about 6 s of CPU per fresh
interpreter, most of a tiny model's 2-process run).

The tests of what the processes compute (ZeRO-2 against ZeRO-3, the loss across batch splits,
a kill or a signal to one process and the resume) use it; the tests of launching itself
(torchrun, the launchers, two nodes, a signal to two processes under torchrun) run the real
launchers. Each rank gets the environment torchrun gives it (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID) and starts from the
imported state, never from another run's: the server only imports and forks.

    server = ForkedRanks(env)                    # one per test worker
    result = server.run(argv, nproc=2, env=env)  # like subprocess.run(..., capture_output=True, text=True)
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minicpmv_ft.launch import free_port  # noqa: E402

PROBE = Path(__file__).resolve().parent / "finetune_probe.py"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
GRACE_S = 30  # after one rank fails, how long the others get to notice before they are killed


class ForkedRanks:
    """Client side: starts the server (this file as a script) once and sends it runs."""

    def __init__(self, env: dict):
        self.server = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       env=env, text=True)

    def run(self, argv, nproc: int, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"argv": [str(a) for a in argv], "nproc": nproc, "env": env, "cwd": os.getcwd(),
                       "stdout": str(out), "stderr": str(err), "timeout": timeout}
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            reply = self.server.stdout.readline()
            if not reply:
                raise RuntimeError(f"the forking server ended (exit {self.server.wait()})")
            codes = json.loads(reply)["returncodes"]
            # 0 when every rank succeeded, else the first failing rank's own code (torchrun says 1)
            failed = [code for code in codes if code != 0]
            return subprocess.CompletedProcess(["forked", *request["argv"]], failed[0] if failed else 0,
                                               *(path.read_text() if path.exists() else "" for path in (out, err)))

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=30)


def start_rank(request: dict, rank: int, port: int, run_id: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.chdir(request["cwd"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), fd)
        nproc = request["nproc"]
        os.environ.clear()
        os.environ.update(request["env"])
        if nproc > 1:  # one process is run as `python finetune_probe.py` is, without a launcher
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                              GROUP_RANK="0", ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(nproc),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_RUN_ID=run_id)
        sys.argv = [str(PROBE), *request["argv"]]
        import finetune_probe

        finetune_probe.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_ranks(pids: list, timeout: float) -> list:
    """Exit codes in rank order (negative: killed by that signal)."""
    codes, deadline = {}, time.monotonic() + timeout
    while len(codes) < len(pids):
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid in pids:
            codes[pid] = os.waitstatus_to_exitcode(status)
            if codes[pid] != 0:
                deadline = min(deadline, time.monotonic() + GRACE_S)
        elif not pid:
            if time.monotonic() > deadline:
                for other in set(pids) - set(codes):
                    os.kill(other, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)
    # A rank killed mid-run leaves its DataLoader workers behind, holding what it held (the output
    # folder's lock) until they notice, within seconds; a launched run ends when they are gone too.
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            break
    return [codes[pid] for pid in pids]


def serve():
    # Replies go to the client on the pipe that was stdout; whatever the imports print goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    # Orphans of the ranks (DataLoader workers of a killed one) become this process's children
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    os.dup2(2, 1)
    sys.path.insert(0, str(PROBE.parent))
    import deepspeed  # noqa: F401  (the training stack, imported once for every rank)
    import finetune_probe  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        port, run_id = free_port("127.0.0.1"), uuid.uuid4().hex
        pids = [start_rank(request, rank, port, run_id) for rank in range(request["nproc"])]
        replies.write(json.dumps({"returncodes": wait_ranks(pids, request["timeout"])}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
