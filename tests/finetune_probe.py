"""Runs finetune.train with test hooks (used by the tests through subprocess / torchrun).

    python tests/finetune_probe.py --probe_out FILE [--kill_after_save STEP] <finetune.py flags>

Writes FILE (JSON: engine class, ZeRO stage, world size, logged losses) and FILE.grads.pt
(gradients of the first optimizer step, rank 0, when not under ZeRO); with
--kill_after_save N the process SIGKILLs itself right after checkpoint N is written.
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
    def __init__(self, out, kill_after_save):
        self.out, self.kill_after_save = out, kill_after_save

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step != 0 or not args.should_save:
            return
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                 if p.grad is not None and any(key in name for key in GRADIENT_PARAMS)}
        torch.save(grads, self.out + ".grads.pt")

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.kill_after_save:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    argv = sys.argv[1:]
    out = argv[argv.index("--probe_out") + 1]
    del argv[argv.index("--probe_out"):argv.index("--probe_out") + 2]
    kill = -1
    if "--kill_after_save" in argv:
        kill = int(argv[argv.index("--kill_after_save") + 1])
        del argv[argv.index("--kill_after_save"):argv.index("--kill_after_save") + 2]
    trainer = finetune.train(argv, callbacks=[Probe(out, kill)])
    if trainer.args.should_save:
        engine = trainer.model_wrapped
        stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        Path(out).write_text(json.dumps({"engine": type(engine).__name__, "zero_stage": stage,
                                         "world_size": trainer.args.world_size, "losses": losses}))
    finetune.finish_distributed()


if __name__ == "__main__":
    main()
