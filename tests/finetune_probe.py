"""Runs finetune.train with test hooks (used by the tests through subprocess / torchrun).

    python tests/finetune_probe.py --probe_out FILE [--kill_after_save STEP] [--signal_at_step STEP]
        <finetune.py flags>

Writes FILE (JSON: engine class, ZeRO stage, world size, logged losses) and FILE.grads.pt
(gradients of the first optimizer step, rank 0, when not under ZeRO); with
--kill_after_save N the process SIGKILLs itself right after checkpoint N is written; with
--signal_at_step N it sends itself SIGTERM during step N (as a cluster's preemption would).
"""
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import finetune  # noqa: E402

GRADIENT_PARAMS = ("resampler.query", "lm_head.weight", "layers.0.self_attn.q_proj.weight", "vpm")


class Probe(TrainerCallback):
    def __init__(self, out, kill_after_save, signal_at_step):
        self.out, self.kill_after_save, self.signal_at_step = out, kill_after_save, signal_at_step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step != 0 or not args.should_save:
            return
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                 if p.grad is not None and any(key in name for key in GRADIENT_PARAMS)}
        torch.save(grads, self.out + ".grads.pt")

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.kill_after_save:
            os.kill(os.getpid(), signal.SIGKILL)


def take_option(argv, name):
    if name not in argv:
        return -1
    at = argv.index(name)
    value = int(argv[at + 1]) if name != "--probe_out" else argv[at + 1]
    del argv[at:at + 2]
    return value


def main():
    argv = sys.argv[1:]
    out = take_option(argv, "--probe_out")
    kill, signal_at = take_option(argv, "--kill_after_save"), take_option(argv, "--signal_at_step")
    trainer = finetune.train(argv, callbacks=[Probe(out, kill, signal_at)])
    if trainer.args.should_save:
        engine = trainer.model_wrapped
        stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        Path(out).write_text(json.dumps({"engine": type(engine).__name__, "zero_stage": stage,
                                         "world_size": trainer.args.world_size, "losses": losses,
                                         "interrupted_by": trainer.interrupted_by}))
    finetune.finish_distributed(128 + trainer.interrupted_by if trainer.interrupted_by else 0)


if __name__ == "__main__":
    main()
