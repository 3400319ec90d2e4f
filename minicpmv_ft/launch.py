"""torchrun for finetune_ds.sh / finetune_lora.sh, with signals that end in a checkpoint.

    python -m minicpmv_ft.launch <torchrun flags> finetune.py <finetune.py flags>

The launchers `exec` this, so SIGTERM to the script's pid, a scheduler's signal to the process
group and Ctrl-C all land here, in torchrun's agent process. Workers run in sessions of their
own (torchrun starts them so), so the terminal does not signal them. Left to itself torchrun
forwards the signal, SIGKILLs the workers 30 s later (mid-save for a large model) and exits 1
with a SignalException traceback. Instead, torchrun handles only SIGQUIT
(`--signals_to_handle`, a documented torchrun flag) and this process:
- forwards the first SIGTERM/SIGINT/SIGHUP once to each worker, which finishes its step, writes
  a complete checkpoint with the others and exits 128+signal (StopOnSignal in checkpoints.py);
- kills the workers at a second signal, so nothing is left training without its launcher;
- exits 128+signal (130 for Ctrl-C, 143 for SIGTERM) with one line, not torchrun's traceback
  nor its "failed (exitcode: 130)" line;
- passes on finetune.py's status 2 (a data or argument problem it printed in one line) without
  torchrun's failure banner around it.
It also resolves `--master_port auto` (what the launchers pass on one node when MASTER_PORT is
unset) to a free port, so two runs on one machine do not collide, and stops in one line when
the port a first node should listen on is taken.
"""
import errno
import logging
import os
import signal
import socket
import sys
import threading

import psutil
from torch.distributed import DistError
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# finetune.py's exit status after printing a reported problem (bad data, arguments, full disk) in
# one line: this launcher recognises it and adds no torchrun error banner around the line.
REPORTED_ERROR_EXIT = 2


def say(message):
    print(f"launch: {message}", file=sys.stderr, flush=True)


class Forwarder:
    """Signal handler of the agent process: first signal to the workers, second kills them."""

    def __init__(self):
        self.received = None
        self.killed = 0

    def install(self):
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        workers = psutil.Process().children()  # the agent's children are the worker processes
        if self.received is None:
            self.received = signal.Signals(signum)
            if not workers:  # still in rendezvous: nothing started that could save
                raise SystemExit(128 + signum)
            say(f"{self.received.name}: each worker finishes its step and saves a checkpoint; "
                f"a second signal kills them")
            for worker in workers:
                send(worker, signum)
            return
        everything = workers + [child for worker in workers for child in children_of(worker)]
        for process in everything:
            send(process, signal.SIGKILL)
        self.killed = len(workers)


def children_of(process):
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def send(process, sig):
    try:
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def reported_by_workers(failure: ChildFailedError) -> bool:
    """A worker stopped on a problem finetune.py reported itself (bad data, arguments), and the
    others did too or were stopped by torchrun after it."""
    codes = [f.exitcode for f in failure.failures.values()]
    return REPORTED_ERROR_EXIT in codes and all(c in (REPORTED_ERROR_EXIT, -signal.SIGTERM, -signal.SIGKILL)
                                                for c in codes)


def option(argv, name, default=None):
    """The value of `--name value` in a torchrun command line (the launchers' form)."""
    return argv[argv.index(name) + 1] if name in argv[:-1] else default


def free_port(host: str = "") -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def with_node_rendezvous(argv: list, environ=os.environ) -> list:
    """argv with node 0's address settled: an empty --master_addr is this machine on one node and
    refused (SystemExit, one line) on several, where each node would wait for the others at its
    own address; several nodes wait NODES_JOIN_TIMEOUT seconds (default 300) for each other."""
    nodes, address = int(option(argv, "--nnodes", "1")), option(argv, "--master_addr", "")
    if not address:
        if nodes > 1:
            raise SystemExit(f"launch: NNODES={nodes} needs MASTER_ADDR, the address of node 0 that every node can "
                             "reach, and the same MASTER_ADDR, MASTER_PORT and NNODES on every node")
        argv = replace_option(argv, "--master_addr", "localhost")
    if nodes > 1 and option(argv, "--rdzv_conf") is None:
        argv = ["--rdzv_conf", f"timeout={environ.get('NODES_JOIN_TIMEOUT', '300')}", *argv]
    return argv


def replace_option(argv: list, name: str, value: str) -> list:
    where = argv.index(name) + 1
    return argv[:where] + [value] + argv[where + 1:]


def with_master_port(argv: list) -> list:
    """argv with `--master_port auto` replaced by a port free on this machine (one node); a port
    chosen by the user that node 0 cannot listen on raises SystemExit with one line."""
    port = option(argv, "--master_port")
    if port is None:
        return argv
    if port == "auto":
        if int(option(argv, "--nnodes", "1")) != 1:
            raise SystemExit("launch: several nodes need one MASTER_PORT that all of them use; set MASTER_PORT")
        return replace_option(argv, "--master_port", str(free_port()))
    if option(argv, "--node_rank", "0") == "0":
        with socket.socket() as probe:
            # as torchrun's store binds: a port left in TIME_WAIT by a run that just ended is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", int(port)))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                raise SystemExit(f"launch: MASTER_PORT {port} is in use on this machine (another run?); choose a "
                                 "free one, or leave MASTER_PORT unset on one node to get a free port") from None
    return argv


class WorkersThatSaidWhy(logging.Filter):
    """Drops torchrun's "failed (exitcode: N) local_rank: ..." where the workers already said why
    in one line: they were asked to stop (they saved and exited 128+signal; this launcher says so)
    or exited REPORTED_ERROR_EXIT after printing the problem. Also its "Sending process N closing
    signal SIGTERM", once per other worker when one ended: after a reported problem it is noise,
    after a crash the failure report names the rank and its error."""

    def __init__(self, forwarder: Forwarder):
        super().__init__()
        self.forwarder = forwarder

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "closing signal" in message:
            return False
        if "failed (exitcode:" not in message:
            return True
        return self.forwarder.received is None and f"(exitcode: {REPORTED_ERROR_EXIT})" not in message


def exit_on_signal_while_joining():
    """A signal while no worker runs yet ends the launcher at once: torchrun waits for the other
    nodes inside TCPStore's C++ code, where Python's handlers do not run until it returns. The
    C-level handler writes the signal's number to the wakeup fd at once; a thread reads it."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch(writer=writer):  # holds the writing end open for as long as the thread reads
        while received := reader.recv(1):
            if not psutil.Process().children():
                say(f"{signal.Signals(received[0]).name} while waiting for the other nodes; nothing was started")
                os._exit(128 + received[0])

    threading.Thread(target=watch, daemon=True).start()


def main(argv=None):
    argv = with_master_port(with_node_rendezvous(list(sys.argv[1:] if argv is None else argv)))
    forwarder = Forwarder()
    forwarder.install()
    exit_on_signal_while_joining()
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(WorkersThatSaidWhy(forwarder))
    try:
        torchrun(["--signals_to_handle", "SIGQUIT", *argv])
    except DistError as error:  # the nodes did not all join in time (a wrong MASTER_ADDR or port, a node missing)
        raise SystemExit(f"launch: the {option(argv, '--nnodes', '1')} nodes did not all join at "
                         f"{option(argv, '--master_addr')}:{option(argv, '--master_port')} "
                         f"({str(error).strip().splitlines()[0]}); start every node with the same MASTER_ADDR "
                         "(node 0's address), MASTER_PORT and NNODES, within NODES_JOIN_TIMEOUT seconds (default "
                         "300) of each other") from None
    except ChildFailedError as failure:
        if forwarder.received is None and reported_by_workers(failure):
            return REPORTED_ERROR_EXIT  # the first worker printed the problem in one line
        if forwarder.received is None:
            raise  # a real failure: torchrun's report names the rank and its error
    else:
        return 0  # finished, a signal during the last step included (the workers saved the final model)
    if forwarder.killed:
        say(f"{forwarder.killed} workers killed before they finished; the newest complete checkpoint "
            f"stays usable (--resume_from_checkpoint last)")
    else:
        say(f"stopped by {forwarder.received.name}; continue with --resume_from_checkpoint last")
    return 128 + int(forwarder.received)


if __name__ == "__main__":
    sys.exit(main())
