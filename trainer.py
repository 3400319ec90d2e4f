"""The Trainer subclass: MiniCPM-V's forward(data=...), a token-normalised loss computed on
label positions only, and checkpoints that load on their own.

Loss: sum of cross-entropy over every trained token of the optimizer step (all
micro-batches, all ranks; computed --loss_chunk_tokens positions at a time, so no more than
that many rows of [tokens x vocab] logits ever exist), divided by the number of those tokens (`num_items_in_batch`, which
the Trainer counts and gathers across ranks). The result does not depend on how a step is
split into micro-batches, gradient accumulation or processes.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext

import torch
from torch.utils.checkpoint import checkpoint
from transformers import Trainer
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from minicpmv_ft.chat_tokens import IGNORE_INDEX
from minicpmv_ft.checkpoints import COMPLETE_MARKER, complete_saved_model
from minicpmv_ft.data_error_stop import failing_sample, first_failure
from minicpmv_ft.errors import DataError
from minicpmv_ft.packing import block_causal_mask
from minicpmv_ft.router_loss import router_loss_of
from minicpmv_ft.versions import ModelVersion, submodule

@contextmanager
def lm_head_on_positions(lm_head: torch.nn.Module, positions: torch.Tensor):
    """Within the block, lm_head receives only hidden[positions] as [1, N, H] instead of
    [B, L, H], so logits exist for trained positions only (a full-vocab [B*L, V] tensor for
    prompt and image tokens would dominate memory with 128k-151k vocabularies)."""

    def select(module, args):
        return (args[0][positions].unsqueeze(0),) + tuple(args[1:])

    handle = lm_head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def lm_head_loss_at(lm_head: torch.nn.Module, positions: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                    kernel: str = "chunked", reduction: str = "sum"):
    """Within the block the model's LM head returns, in place of logits, the summed
    cross-entropy of its input at `positions` against `targets` (a 0-dim tensor; reduction
    "none": each target's, [N], which a preference loss sums per answer): computed
    `chunk_tokens` rows at a time (chunked_cross_entropy), or with kernel "liger" by Liger's
    fused linear cross-entropy (CUDA), which never holds the logits at all. It stays inside the
    model's forward, where DDP and DeepSpeed expect the head's weight to be used."""
    project = type(lm_head).forward  # the head's own computation, without its hooks (they ran for this call)

    def loss_forward(hidden, *args, **kwargs):
        rows = hidden.reshape(-1, hidden.shape[-1])
        if kernel == "liger":
            if reduction != "sum":  # its fused kernel reduces to a sum or mean only
                raise ValueError("--loss_kernel liger sums the loss over the tokens; per-token losses need "
                                 "--loss_kernel chunked")
            return fused_linear_cross_entropy(lm_head, rows, targets)
        return chunked_cross_entropy(lambda part: project(lm_head, part), rows, targets, chunk_tokens, reduction)

    with lm_head_on_positions(lm_head, positions):
        lm_head.forward = loss_forward  # an instance attribute over the class method
        try:
            yield
        finally:
            del lm_head.forward


def chunked_cross_entropy(project, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                          reduction: str = "sum") -> torch.Tensor:
    """Sum of cross-entropy of project(hidden) [N, V] against targets [N] (reduction "none":
    each row's, [N]), never holding more than `chunk_tokens` rows of logits: each chunk's
    logits are freed after its loss and recomputed in the backward pass (activation
    checkpointing). Same value and gradients as one cross-entropy over all rows, which is what a
    chunk of N or more rows computes."""
    if targets.numel() <= chunk_tokens:
        return _chunk_loss(project, hidden, targets, reduction)
    parts = [checkpoint(_chunk_loss, project, hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens],
                        reduction, use_reentrant=False) for start in range(0, targets.numel(), chunk_tokens)]
    if reduction == "none":
        return torch.cat(parts)
    total = hidden.sum().float() * 0
    for part in parts:
        total = total + part
    return total


def fused_linear_cross_entropy(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of lm_head(hidden) against targets by Liger's fused kernel (logits
    are made and reduced block by block on the GPU; gradients computed in the same pass)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    if not isinstance(lm_head, torch.nn.Linear):
        raise ValueError(f"--loss_kernel liger needs the LM head to be a plain Linear layer, not "
                         f"{type(lm_head).__name__}; use --loss_kernel chunked")
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(lm_head.weight, hidden, targets, lm_head.bias)


def _chunk_loss(project, hidden, targets, reduction="sum"):
    return torch.nn.functional.cross_entropy(project(hidden).float(), targets, reduction=reduction)


def shifted_targets(labels: torch.Tensor):
    """(positions [B, L] bool, targets [N]): hidden state t predicts labels[t + 1]."""
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions, labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


class MiniCPMVTrainer(Trainer):
    def __init__(self, *args, version: ModelVersion, source_model_dir: str | None = None,
                 max_slice_nums: int | None = None, module_lrs: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # the checkpoint generation: how its forward takes a batch, where its LM head is, how a
        # batch without attention_mask (packed: minicpmv_ft/packing.py) keeps samples apart
        self.version = version
        self.module_lrs = module_lrs or {}  # module name (vpm, resampler) -> its learning rate
        self.max_slice_nums = max_slice_nums  # --max_slice_nums, when given: saved into processor files too
        # compute_loss normalises by num_items_in_batch itself; this also stops the Trainer
        # from dividing the loss by the gradient accumulation steps a second time.
        self.model_accepts_loss_kwargs = True
        self.source_model_dir = source_model_dir
        # a mixture-of-experts LLM's load-balancing term (minicpmv_ft/router_loss.py); unweighted
        # values of the micro-batches since the last log
        self.router_loss = router_loss_of(submodule(self.model, version.llm_module))
        self.router_losses = []
        self.data_error = None  # a sample that failed to load while training: the run stopped there

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        positions, targets = shifted_targets(labels)
        loss, balance = self.head_loss(model, inputs, positions, targets)
        loss = self.per_step(loss, targets.numel(), num_items_in_batch)
        loss = self.with_router_term(loss, balance, model.training)
        return (loss, {"loss": loss}) if return_outputs else loss

    def head_loss(self, model, inputs, positions, targets, reduction="sum", pairs=None, router=True):
        """(the cross-entropy of the LM head at `positions` against `targets` from one forward of
        `model` on `inputs`: summed, or per target with reduction "none"; the router's unweighted
        load-balancing loss of that forward, or None). `pairs`: a preference batch of that many
        pairs, whose images go through the vision tower once per pair."""
        unwrapped = self.accelerator.unwrap_model(model)
        lm_head = submodule(unwrapped, self.version.head_owner).get_output_embeddings()
        # ZeRO-3 gathers the head's weight per call, which checkpoint recomputation cannot rely
        # on: one chunk there (the labelled positions only, as before chunking).
        chunk = max(targets.numel(), 1) if is_deepspeed_zero3_enabled() else self.args.loss_chunk_tokens
        # no images and no videos: the tower would not run (registry: vision_skipped_without_images)
        blank = self.version.vision_skipped_without_images and "pixel_values" not in inputs \
            and "pixel_values_videos" not in inputs
        router = self.router_loss if router else None
        llm = submodule(unwrapped, self.version.llm_module)
        shared_vision = self.version.family.vision_once_per_pair(unwrapped, self.version, pairs) if pairs \
            else nullcontext()
        with lm_head_loss_at(lm_head, positions, targets, chunk, self.args.loss_kernel, reduction), \
                self._blank_view_in_forward(model, blank), shared_vision, \
                (router.captured(llm) if router else nullcontext([])) as router_logits:
            loss = model(**self.version.family.forward_kwargs(inputs, unwrapped),
                         attention_mask=self._attention_mask(model, inputs), use_cache=False,
                         **({"output_router_logits": True} if router else {})).logits
        return loss, router.unweighted(router_logits, inputs.get("attention_mask")) if router else None

    def per_step(self, loss, items: int, num_items_in_batch):
        """`loss`, summed over `items` items (tokens, pairs) of this micro-batch, as its share of
        the optimizer step's mean over `num_items_in_batch`, the step's items on all processes
        (None: evaluation without a step-wide count, the mean over this batch)."""
        if num_items_in_batch is None:
            return loss / max(items, 1)
        loss = loss / num_items_in_batch
        if self.args.average_tokens_across_devices:
            # the count is global; DDP/DeepSpeed average gradients over processes
            loss = loss * self.accelerator.num_processes
        return loss

    def with_router_term(self, loss, balance, training: bool):
        """`loss` plus the weighted router loss of its forward (none without a router)."""
        if balance is None:
            return loss
        if training:
            self.router_losses.append(balance.detach())  # a tensor: read at logging, no sync per micro-batch
        steps = self.args.gradient_accumulation_steps if training else 1
        return loss + self.router_loss.coefficient * balance.to(loss.dtype) / steps

    @contextmanager
    def _blank_view_in_forward(self, model, wanted: bool):
        """For a text-only batch (`wanted`), runs the vision tower on one blank view of 4 x 4
        patches (the smallest its mergers take) and adds 0 x its features to the LLM's input
        embeddings, so that every process runs the tower on every step (registry:
        vision_skipped_without_images) and the LLM's backward has the same shape as with images.
        This happens inside the forward where an image batch's features are made, after the
        embeddings and before the LLM: ZeRO-3's weight gathers are collectives that every process
        must make in the same order, forward and backward."""
        if not wanted:
            yield
            return
        unwrapped = self.accelerator.unwrap_model(model)
        patch = unwrapped.config.patch_size
        pixels = torch.zeros(1, 3, patch, 16 * patch, device=self.args.device)
        sizes = torch.tensor([[4, 4]], dtype=torch.int32, device=self.args.device)

        def add_blank_view(module, args, kwargs):
            features = torch.cat(unwrapped.get_image_features(pixels, sizes).pooler_output)
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"] + features.sum().to(kwargs["inputs_embeds"].dtype) * 0.0
            return args, kwargs

        # prepend: before DeepSpeed's own hook on the LLM gathers its weights, as in an image batch
        handle = submodule(unwrapped, self.version.llm_module).register_forward_pre_hook(
            add_blank_view, prepend=True, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _attention_mask(self, model, inputs):
        """The batch's padding mask; for a packed batch (none) None, so that the LLM finds the
        samples from the restarting position ids, or the block-causal 4-D mask for an LLM that
        cannot (registry: packed_attention)."""
        if "attention_mask" in inputs or self.version.packed_attention == "position_ids":
            return inputs.get("attention_mask")
        llm = submodule(self.accelerator.unwrap_model(model), self.version.llm_module)
        return block_causal_mask(inputs["position_ids"], llm.get_input_embeddings().weight.dtype,
                                 llm.config._attn_implementation)

    def _get_train_sampler(self, train_dataset=None):
        """--group_by_length with the lengths the data check measured; the Trainer's own way
        builds every item (every image decoded and sliced) to measure it."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.group_by_length and getattr(dataset, "lengths", None) is not None:
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self):
        """The Trainer's optimizer, with the modules that have their own learning rate
        (--vision_lr, --resampler_lr) in param groups of their own."""
        optimizer = super().create_optimizer()
        if self.module_lrs:
            split_param_groups(optimizer, self.model, self.module_lrs)
        return optimizer

    def _load_optimizer_and_scheduler(self, checkpoint):
        """The Trainer's, then the rate of the step the run continues at set from the schedule
        as laid over this run's length: the optimizer's restored rate is the checkpoint run's
        next one (0 at the end of a linear or cosine schedule), and the Trainer would train the
        first resumed step at it before the re-laid scheduler steps."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            continue_schedule(self.lr_scheduler)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The next update's batches; none once --max_steps is reached (a resume at or past it
        would otherwise train one more step: the Trainer checks the length after each step), or
        when a sample fails to load on any rank: then training stops with a checkpoint of the
        steps done (minicpmv_ft/data_error_stop.py) and `data_error` holds the failure."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return [], None
        # the Trainer's fetch, with the failure agreed on before its count of the batches' items,
        # which gathers across ranks
        batches, failure = [], None
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
            except (DataError, RuntimeError) as error:
                failure = failing_sample(error)
                if failure is None:
                    raise
                break
        self.data_error = first_failure(failure, self.args.device)
        if self.data_error is None:
            return batches, self._get_num_items_in_batch(batches, device)
        self.control.should_training_stop = True
        # saved at the epoch's end, where the loop goes next; not again where a checkpoint has this step
        saved = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}", COMPLETE_MARKER)
        self.control.should_save = self.state.global_step > 0 and not os.path.exists(saved)
        return [], None

    def compare_trainer_and_checkpoint_args(self, training_args, trainer_state):
        """The Trainer's check on resume, with a ratio (--eval_steps 0.1, as the launchers pass it)
        compared as the steps it stands for in the checkpoint's run: the Trainer compared 0.1 with
        the 10 it had resolved and warned on every resume."""
        resolved = {name: math.ceil(trainer_state.max_steps * getattr(training_args, name))
                    for name in ("logging_steps", "eval_steps", "save_steps")
                    if getattr(training_args, name) is not None and 0 < getattr(training_args, name) < 1}
        super().compare_trainer_and_checkpoint_args(_WithValues(training_args, resolved), trainer_state)

    def log(self, logs, *args, **kwargs):
        """Adds each module's own rate at the step `learning_rate` was logged for. The groups'
        current "lr" is already the next step's (the scheduler stepped after the Trainer took
        `learning_rate`); every group follows the same schedule, so the module's rate is the
        logged one times the ratio of the groups' base rates."""
        if self.router_losses and "loss" in logs:
            logs["router_aux_loss"] = float(torch.stack(self.router_losses).float().mean())
            self.router_losses = []
        if self.module_lrs and "learning_rate" in logs and self.optimizer is not None:
            groups = self.optimizer.param_groups
            base = next(group for group in groups if "module" not in group)
            for group in groups:
                if "module" in group:
                    ratio = group.get("initial_lr", group["lr"]) / base.get("initial_lr", base["lr"])
                    # by role: the module names differ between the environments (vpm, model.vision_tower)
                    role = "vision" if group["module"] == self.version.vision_module else "resampler"
                    logs[f"learning_rate_{role}"] = logs["learning_rate"] * ratio
        super().log(logs, *args, **kwargs)

    def _align_special_tokens(self):
        """Keeps the checkpoint's own BOS/EOS/PAD ids. The Trainer would rewrite them in the config
        and generation config from the tokenizer (2.6: bos_token_id None) and log a warning; the
        saved model would then differ from the one its chat() and serving settings expect."""

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            complete_saved_model(None if _is_peft(self.model) else self.source_model_dir, output_dir,
                                 self.max_slice_nums)


def continue_schedule(scheduler):
    """Sets the optimizer's rates (and the scheduler's last ones, which the Trainer logs) to the
    schedule's value at its restored step. Only a LambdaLR (every schedule of the Trainer but
    reduce_lr_on_plateau) can be asked for its value at a step."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    rates = [base * rate(scheduler.last_epoch) for base, rate in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


def split_param_groups(optimizer, model, module_lrs: dict):
    """Moves the parameters of each module in `module_lrs` into groups of their own (same weight
    decay as before, the module's learning rate); before the first step, so no state moves."""
    owners = {id(p): owner(name, module_lrs) for name, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        split = {None: dict(group, params=[])}
        split.update({module: dict(group, params=[], lr=lr, module=module) for module, lr in module_lrs.items()})
        for param in group["params"]:
            split[owners.get(id(param))]["params"].append(param)
        groups += [g for g in split.values() if g["params"]]
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)


def owner(name: str, modules) -> str | None:
    """The module of `modules` a parameter name belongs to ('base_model.model.vpm.x' -> 'vpm';
    dotted module paths as 'model.merger' match whole name parts)."""
    return next((module for module in modules if f".{module}." in f".{name}."), None)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


class _WithValues:
    """`obj` with some attributes given other values (read-only)."""

    def __init__(self, obj, values: dict):
        self._obj, self._values = obj, values

    def __getattr__(self, name):
        return self._values[name] if name in self._values else getattr(self._obj, name)
