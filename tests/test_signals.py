"""How a worker and the launcher take repeated signals (issue 8.12). Each case runs in a
process of its own, so pytest's handlers are left alone."""
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.long  # processes of their own, waiting out the signal windows

WORKER = """
import signal, sys, time
from minicpmv_ft.checkpoints import StopOnSignal
stop = StopOnSignal()
stop.DUPLICATE_WINDOW_S = {window}
stop.on_train_begin(None, None, None)
print("ready", flush=True)
sys.stdin.readline()
print("received", stop.received, flush=True)
"""

LAUNCHER = """
import subprocess, sys
from minicpmv_ft.launch import Forwarder
forwarder = Forwarder()
forwarder.install()
worker = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                           "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True,
                          start_new_session=True)
worker.stdout.readline()
print("ready", flush=True)
worker.wait()
print("worker", worker.returncode, "killed", forwarder.killed, flush=True)
"""


def start(code):
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    return proc


def test_a_repeated_signal_within_the_window_is_the_same_request():
    """A scheduler signals every process and the launcher forwards a copy: the worker must not
    take the copy as 'stop at once'."""
    proc = start(WORKER.format(window=60))
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0, err
    assert out == "received 15\n"


def test_a_signal_after_the_window_stops_at_once():
    proc = start(WORKER.format(window=0.2))
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM


def test_launcher_forwards_the_first_signal_and_kills_at_the_second():
    proc = start(LAUNCHER)
    proc.send_signal(signal.SIGTERM)  # forwarded: the worker ignores it (as if busy saving)
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert out == f"worker {-signal.SIGKILL} killed 1\n", err
    assert "launch: SIGTERM: each worker finishes its step and saves a checkpoint" in err
