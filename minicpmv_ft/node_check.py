"""The data check once per node: its first process checks with all of the node's cores, the
node's other training processes wait and read its reports (before, every process checked the
whole data set with its share of the cores, each decoding the same headers)."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from typing import Callable

import torch.distributed as dist

logger = logging.getLogger(__name__)


def node_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shared_on_node() -> bool:
    """Several training processes on this node, already joined in a process group."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized()


def checked_once_per_node(check: Callable[[int], list], source: str) -> list:
    """check(number of worker processes) -> reports, run by the node's first process with all the
    node's cores (call it when shared_on_node()); the others read its reports from the node's
    temporary folder."""
    # the same name in every process of this node's launcher, distinct per data file and run
    key = hashlib.sha256(f"{os.getppid()}|{source}|{os.environ.get('TORCHELASTIC_RUN_ID', '')}".encode()).hexdigest()
    path = os.path.join(tempfile.gettempdir(), f"minicpmv_check_{key[:20]}.pkl")
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if first:
        logger.info("%s: checked by this node's first process with %d cores; the node's %d other training processes "
                    "use its reports", source, node_cores(), int(os.environ["LOCAL_WORLD_SIZE"]) - 1)
        reports = check(node_cores())
        with open(path + ".tmp", "wb") as handle:
            pickle.dump(reports, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path + ".tmp", path)
    dist.barrier()  # the file is there
    if not first:
        with open(path, "rb") as handle:
            reports = pickle.load(handle)
    dist.barrier()  # every process has read it
    if first:
        os.remove(path)
    return reports
