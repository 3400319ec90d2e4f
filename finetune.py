"""Fine-tune a MiniCPM-V checkpoint (full or LoRA) on conversations with images, or on preference
pairs with --method dpo (dpo_trainer.py).

Read top to bottom: arguments (declared in minicpmv_ft/arguments.py) -> checks -> tokenizer,
config and data (bad data fails before any weight is loaded) -> model -> what trains (freezing /
LoRA) -> Trainer -> train -> save. Launch through finetune_ds.sh / finetune_lora.sh; every
transformers.TrainingArguments option is accepted too (docs/options.md lists ours).
"""
from __future__ import annotations

import copy
import logging
import os
import sys
import time
import traceback
from collections import Counter

import torch
import transformers
from transformers.integrations import TensorBoardCallback, is_deepspeed_zero3_enabled

from dataset import SupervisedDataset
from dpo_trainer import PreferenceSettings, PreferenceTrainer
from minicpmv_ft import reference_file
from minicpmv_ft.arguments import (ArgumentParser, DataArguments, ModelArguments, TrainingArguments, check_workers,
                                   run_identity, video_scheme, zero_stage)
from minicpmv_ft.checkpoints import (CheckpointWriteError, MarkCompleteCheckpoints, StopOnSignal, checkpoint_step,
                                     explain_write_failures, resolve_resume, wants_resume)
from minicpmv_ft.deepspeed_resume import check_deepspeed_checkpoint
from minicpmv_ft.errors import DataError
from minicpmv_ft.launch import REPORTED_ERROR_EXIT
from minicpmv_ft.loading import load_model as load_checkpoint
from minicpmv_ft.loading import load_tokenizer_and_version, local_dir
from minicpmv_ft.lora_targets import check_lora_targets, peft_targets
from minicpmv_ft.loss_plot import PLOT_FILE, plot_loss
from minicpmv_ft.output_paths import check_output_folder, data_folder
from minicpmv_ft.packing import PackedDataset, check_packable
from minicpmv_ft.pickled_weights import check_pickled_weights
from minicpmv_ft.preference_dataset import PreferenceDataset
from minicpmv_ft.preference_reference import COPY, REFERENCE_SOURCES, resolve_reference
from minicpmv_ft.quiet import quiet_third_party
from minicpmv_ft.run_record import (check_new_run, identity_hash, length_changes, output_dir_lock, run_hashes,
                                   write_run)
from minicpmv_ft.versions import set_max_slice_nums, submodule
from minicpmv_ft.zero3_leaves import mark_zero3_leaves
from trainer import MiniCPMVTrainer

logger = logging.getLogger("finetune")
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_arguments(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    _init_cpu_deepspeed(argv)
    parser = ArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(argv)
    return model_args, data_args, train_args


def _init_cpu_deepspeed(argv):
    """DeepSpeed on CPU (tests, CI) needs the gloo process group before TrainingArguments is
    built; otherwise ZeRO-3's zero.Init inside from_pretrained sees a world of one.

    On CPU DeepSpeed also compiles its shared-memory all-reduce op (C++ against torch's headers:
    about 70 s of CPU and a compiler) whenever it sets up its communication; only its inference
    all-reduce uses the op, training's collectives are gloo's, so it is not built."""
    uses_deepspeed = any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)
    if not uses_deepspeed or torch.cuda.is_available():
        return
    import importlib

    import deepspeed

    # by its module's name: the attribute deepspeed.comm.torch is the torch package itself
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # as where it cannot be built
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        deepspeed.init_distributed(dist_backend="gloo")


def check_version_supported(version, config, train_args, world_size: int):
    """Combinations that would hang rather than fail, refused before any weight is loaded."""
    per_image = version.vision_call_per_image or not getattr(config, "batch_vision_input", True)
    if per_image and zero_stage(train_args) == 3 and world_size > 1:
        raise ValueError(
            f"{version.checkpoints} runs its vision tower once per image; under ZeRO-3 every run is a "
            "collective weight gather, so processes holding different numbers of images deadlock. "
            "Use ds_config_zero2.json (optimizer offload saves memory there too)")


def check_video_supported(version, train_set, train_args, world_size: int):
    """Video data under ZeRO-3, refused where it would go wrong: 4.5's 3-D resampler runs its
    attention once per group of video frames, so processes holding different numbers of groups
    would hang (as 2.0 does); a native model runs its vision tower and merger once for a batch's
    images and once more for its videos, and the merger is a ZeRO-3 leaf module
    (minicpmv_ft/zero3_leaves.py) whose gradients DeepSpeed reduces after each call, so a second
    call in one step makes them wrong (measured: a ZeRO-3 step's loss drifts from ZeRO-2's)."""
    if zero_stage(train_args) != 3 or not any(report.videos for report in train_set.reports):
        return
    if version.video.grouped and world_size > 1:
        raise ValueError(
            f"{version.checkpoints} runs its resampler once per group of video frames; under ZeRO-3 every run is a "
            "collective weight gather, so processes holding different numbers of groups deadlock. Use "
            "ds_config_zero2.json for video data (optimizer offload saves memory there too)")
    if version.video.by_processor and version.zero3_leaf_modules:
        raise ValueError(
            f"{version.checkpoints} runs its vision tower and merger once for a batch's images and once more for its "
            "videos; under ZeRO-3 the merger is a leaf module whose gradients DeepSpeed reduces after each call, so "
            "the second call makes them wrong. Use ds_config_zero2.json for video data (optimizer offload saves "
            "memory there too)")


def model_dtype(train_args) -> torch.dtype:
    return torch.bfloat16 if train_args.bf16 else torch.float16 if train_args.fp16 else torch.float32


def load_datasets(version, data_args, tokenizer, config, num_workers=1, method="sft"):
    """(train, eval or None): conversations, or preference pairs with --method dpo."""
    common = {"version": version, "video": video_scheme(version, data_args), "max_slice_nums": data_args.max_slice_nums,
              "model_max_length": data_args.model_max_length, "skip_bad_samples": data_args.skip_bad_samples,
              "verify_images": data_args.verify_images, "num_workers": max(1, num_workers),
              "keep_earlier_reasoning": data_args.keep_earlier_reasoning, "data_format": data_args.data_format,
              "base_dir": data_args.image_folder, "image_cache_dir": data_args.image_cache_dir}
    kind = PreferenceDataset if method == "dpo" else SupervisedDataset
    train_set = kind(data_args.data_path, tokenizer, config, **common)
    eval_set = kind(data_args.eval_data_path, tokenizer, config, **common) if data_args.eval_data_path else None
    return train_set, eval_set


def use_reference_files(model_folder, data_args, datasets, identity):
    """The reference pass's log-probs (reference_logps.py) where it wrote them for this model and
    data: into the pair datasets, as if the data carried them (the data files' fingerprints from
    the run's identity)."""
    for dataset, path, key in zip(datasets, (data_args.data_path, data_args.eval_data_path), ("data", "eval_data")):
        if dataset is not None and os.path.exists(reference_file.reference_path(path)):  # the header reads the media
            reference_file.attach(dataset, path, reference_file.header(model_folder, path, data_args, dataset,
                                                                       identity[key]))
            logger.info("%s: reference log-probs from %s", path, reference_file.reference_path(path))


def load_model(model_args, train_args, version, dtype):
    """The checkpoint, with its version's known load problems worked around."""
    kwargs = {}
    if train_args.q_lora:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=[version.vision_module, version.resampler_module,
                                                                 "lm_head"])
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    # Under ZeRO-3 the weights are already partitioned in `dtype` and DeepSpeed owns their casting.
    cast = not train_args.q_lora and not is_deepspeed_zero3_enabled()
    model = load_checkpoint(model_args.model_name_or_path, version, dtype, cast=cast, **kwargs)
    # Training needs no KV cache, and 2.0's remote code breaks with one on transformers >= 4.50.
    model.config.use_cache = False
    submodule(model, version.llm_module).config.use_cache = False
    return model


def configure_trainable(model, version, train_args):
    """Freezes what is not trained, or wraps the model with LoRA adapters."""
    llm, vision = submodule(model, version.llm_module), submodule(model, version.vision_module)
    for param in model.parameters():  # QLoRA's 4-bit weights are integer tensors and cannot require grad
        param.requires_grad_(param.is_floating_point())
    if not train_args.tune_vision:
        vision.requires_grad_(False)
    if not train_args.use_lora:
        if not train_args.trains_llm:
            llm.requires_grad_(False)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    llm.requires_grad_(False)
    if train_args.q_lora:
        # Non-reentrant checkpointing (our default) needs no input-grad hook; peft's hook makes the
        # embedding output a leaf, which the checkpoints' forward then writes image features into.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train_args.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=train_args.gradient_checkpointing_kwargs)
    modules_to_save = [version.resampler_module] + ([version.vision_module] if train_args.tune_vision else []) \
        + list(train_args.lora_modules_to_save)
    config = LoraConfig(r=train_args.lora_r, lora_alpha=train_args.lora_alpha, lora_dropout=train_args.lora_dropout,
                        modules_to_save=modules_to_save,
                        **peft_targets(model, train_args.lora_target_modules or version.lora_target_regex))
    return get_peft_model(model, config)


def log_settings(model, version, train_set, eval_set, data_args, train_args):
    def numel(p):
        return getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions parameters

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    settings = train_set.settings
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    # a native version's processor sizes each view's placeholder itself (query_num 0: none fixed)
    tokens = f"query_num={settings.query_num}" if settings.query_num else "tokens per view set by its processor"
    logger.info("MiniCPM-V %s (%s), %s, max_slice_nums=%d, scale_resolution=%d, image ids=%s, model_max_length=%d",
                version.name, version.checkpoints, tokens, settings.max_slice_nums, settings.scale_resolution,
                settings.use_image_id, data_args.model_max_length)
    logger.info("processes: %s", process_layout(train_args))
    logger.info("data loading: %d worker processes%s, pin_memory=%s, image cache: %s",
                train_args.dataloader_num_workers, " (persistent)" * train_args.dataloader_persistent_workers,
                train_args.dataloader_pin_memory, data_args.image_cache_dir or "off")
    for name, ds in (("train", train_set), ("eval", eval_set)):
        if ds is not None:
            logger.info("%s data: %d %s used, %d dropped, %d failing %s skipped", name, len(ds), ds.unit,
                        len(ds.dropped), len(ds.failed), ds.unit)


def process_layout(train_args) -> str:
    """How the run is spread, in words: "2 (2 per node, 1 node), DeepSpeed ZeRO-2, bf16"."""
    world, per_node = train_args.world_size, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    nodes = max(1, world // max(per_node, 1))
    engine = (f"DeepSpeed ZeRO-{zero_stage(train_args)}" if train_args.deepspeed
              else "DDP" if world > 1 else "no data parallelism")
    precision = "bf16" if train_args.bf16 else "fp16" if train_args.fp16 else "fp32"
    device = "CPU" if train_args.use_cpu or not torch.cuda.is_available() else "GPU"
    return (f"{world} ({per_node} per node, {nodes} node{'s' * (nodes > 1)}), {engine}, {precision} on "
            f"{device}{'s' * (world > 1)}")


def warn_left_out(datasets):
    """The last word of a run that trained without some samples, so it is not scrolled away."""
    for name, ds in datasets:
        if ds is None or not (ds.dropped or ds.failed):
            continue
        reasons = Counter(reason.split(": ")[0] for _, _, reason in ds.dropped + ds.failed)  # without the paths
        left_out = len(ds.dropped) + len(ds.failed)
        logger.warning("%s data: %d of %d %s were left out: %s (the log's start lists them; check_data.py "
                       "shows all)", name, left_out, len(ds) + left_out, ds.unit,
                       "; ".join(f"{n} {reason}" for reason, n in reasons.most_common()))


def finish_distributed(exit_code: int = 0):
    """Ends a distributed run without the gloo shutdown abort (pytorch issue 190489): a gloo
    worker thread can abort the interpreter at exit after everything was saved."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    if exit_code:
        sys.exit(exit_code)


def train(argv=None, callbacks=None):
    """Runs the whole job and returns the Trainer (tests add callbacks)."""
    quiet_third_party()
    model_args, data_args, train_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if train_args.should_log else logging.WARNING)
    check_output_folder("--output_dir", train_args.output_dir, {
        "the model's folder (--model_name_or_path)": local_dir(model_args.model_name_or_path),
        "the folder of --data_path": data_folder(data_args.data_path),
        "the folder of --eval_data_path": data_folder(data_args.eval_data_path),
        "--image_folder": data_args.image_folder})
    with output_dir_lock(train_args.output_dir):
        return run_training(model_args, data_args, train_args, callbacks)


def batching(train_set, data_args, train_args, eval_set=None):
    """(what the Trainer samples from, the collator): packs of samples laid end to end in one row
    with --packing, else the samples, right-padded per micro-batch. The Trainer collates eval
    batches with the same collator, so grouped videos in either set decide the one-row batches."""
    if train_args.packing:
        return PackedDataset(train_set, data_args.model_max_length), train_set.packed_collator
    grouped = train_set.version.vision_split_by_frames and any(
        video["groups"] < video["frames"] for ds in (train_set, eval_set) if ds is not None
        for report in ds.reports for video in report.videos)
    if grouped and train_args.method == "dpo":
        if max(train_args.per_device_train_batch_size, train_args.per_device_eval_batch_size) > 1:
            raise ValueError(f"grouped video frames (MiniCPM-V {train_set.version.name}) in preference pairs need "
                             "--per_device_train_batch_size 1 and --per_device_eval_batch_size 1 (its remote code "
                             "would give a later pair of a batch another pair's video features)")
        return train_set, train_set.collator
    if grouped:
        logger.info("grouped video frames (MiniCPM-V %s): each micro-batch goes to the model as one row, samples "
                    "kept apart as with --packing (its remote code would give a later sample of a batch another "
                    "sample's video features, or none)", train_set.version.name)
        return train_set, train_set.packed_collator
    return train_set, train_set.collator


def module_lrs(version, train_args) -> dict:
    lrs = {version.vision_module: train_args.vision_lr, version.resampler_module: train_args.resampler_lr}
    return {module: lr for module, lr in lrs.items() if lr is not None}


def log_resume(checkpoint: str, max_steps: int, length_changes=(), scheduler: str = "linear"):
    step = checkpoint_step(checkpoint)
    logger.info("resuming from %s: %d steps done, training continues at step %d", checkpoint, step, step + 1)
    if length_changes:
        logger.info("the run's length changed: %s; the learning-rate schedule (%s) is laid over the new length "
                    "and continues from step %d of it", "; ".join(length_changes), scheduler, step + 1)
    if 0 < max_steps < step:
        raise ValueError(f"{checkpoint} is past --max_steps {max_steps}: resume from a checkpoint at or before step "
                         f"{max_steps}, or give --max_steps {step} or more")
    if max_steps == step:
        logger.warning("%s is already at --max_steps %d: nothing is left to train; the final model is saved "
                       "again from it", checkpoint, max_steps)


def one_tensorboard_run(trainer, identity):
    """TensorBoard's folder runs/<the run's hash> (its length left out), unless the user chose one:
    a resumed or lengthened run goes on in the same TensorBoard run, not in a second one named
    after the time it started."""
    if getattr(trainer.args, "tensorboard_folder_chosen", True):
        return
    folder = os.path.join(trainer.args.output_dir, "runs", identity_hash(identity))
    if hasattr(trainer.args, "logging_dir"):  # transformers 4.57: the callback reads the argument
        trainer.args.logging_dir = folder
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):  # transformers 5: its own attribute
            callback.logging_dir = folder


def evaluated_last_step(trainer) -> bool:
    step = trainer.state.global_step
    return any("eval_loss" in entry and entry.get("step") == step for entry in trainer.state.log_history)


def train_and_save(trainer, resume, identity, stop_on_signal) -> bool:
    """Trains and saves the final model, then runs the final evaluation (a failure there keeps
    the saved model); False when a signal stopped training at a checkpoint."""
    trainer.train(resume_from_checkpoint=resume)
    if trainer.data_error is not None:
        step = trainer.state.global_step
        kept = (f"checkpoint-{step} holds the {step} step{'s' * (step > 1)} done: fix the file, or add "
                "--skip_bad_samples, and continue with --resume_from_checkpoint last") if step else "no step was done"
        raise ValueError(f"{trainer.data_error}; training stopped there, {kept}")
    finished = stop_on_signal.stopped_at is None
    if finished:
        trainer.save_model(trainer.args.output_dir)  # on every rank: ZeRO-3 gathers weights collectively
        if trainer.args.should_save:
            write_run(trainer.args.output_dir, identity, finished=True)
        if trainer.eval_dataset is not None and not evaluated_last_step(trainer):
            trainer.evaluate()  # a run shorter than --eval_steps (or with --eval_strategy no) still ends with one
    trainer.save_state()
    if trainer.args.should_save and plot_loss(trainer.state.log_history,
                                              os.path.join(trainer.args.output_dir, PLOT_FILE)):
        logger.info("loss curves: %s", os.path.join(trainer.args.output_dir, PLOT_FILE))
    if not finished and trainer.args.should_log:  # the first process says it for all
        logger.warning("interrupted by signal %d: checkpoint-%d is the last complete checkpoint; continue with "
                       "--resume_from_checkpoint last", stop_on_signal.received, stop_on_signal.stopped_at)
    return finished


def run_training(model_args, data_args, train_args, callbacks=None):
    """The job, while this run holds its output folder."""
    identity = run_identity(model_args, data_args, train_args)
    check_new_run(train_args.output_dir, identity, wants_resume(train_args.resume_from_checkpoint),
                  train_args.overwrite_output_dir)
    resume = resolve_resume(train_args.resume_from_checkpoint, train_args.output_dir,
                            run_hashes(train_args.output_dir, identity))
    if resume and train_args.deepspeed:
        check_deepspeed_checkpoint(resume)  # DeepSpeed itself unpickles with weights_only=False
    if resume:
        log_resume(resume, train_args.max_steps, length_changes(train_args.output_dir, identity),
                   getattr(train_args.lr_scheduler_type, "value", train_args.lr_scheduler_type))
    tokenizer, config, version = load_tokenizer_and_version(model_args.model_name_or_path, model_args.llm_type)
    source_dir = local_dir(model_args.model_name_or_path)  # the checkpoint's files: fingerprinted, copied into outputs
    check_pickled_weights(source_dir)
    check_version_supported(version, config, train_args, int(os.environ.get("WORLD_SIZE", "1")))
    if train_args.use_lora:
        check_lora_targets(config, version, train_args.lora_target_modules, train_args.lora_dropout,
                           train_args.lora_modules_to_save)
    if data_args.keep_earlier_reasoning and not version.chat.thinking:
        raise ValueError(f"--keep_earlier_reasoning: MiniCPM-V {version.name} has no thinking blocks to keep; "
                         "drop the flag")
    if train_args.packing:
        check_packable(config, version.checkpoints)
    train_set, eval_set = load_datasets(version, data_args, tokenizer, config, check_workers(), train_args.method)
    check_video_supported(version, train_set, train_args, int(os.environ.get("WORLD_SIZE", "1")))
    reference = None
    if train_args.method == "dpo":
        if train_args.dpo_reference in ("auto", "data"):
            use_reference_files(source_dir or model_args.model_name_or_path, data_args, (train_set, eval_set),
                                identity)
        reference = resolve_reference(train_args.dpo_reference, [train_set, eval_set], train_args.use_lora,
                                      is_deepspeed_zero3_enabled())
        logger.info("reference log-probs: %s", REFERENCE_SOURCES[reference])
    model = load_model(model_args, train_args, version, model_dtype(train_args))
    if data_args.max_slice_nums is not None:  # saved with the model, so its chat() slices as training did
        set_max_slice_nums(model.config, version, data_args.max_slice_nums)
    # LoRA adapters are initialised before the Trainer seeds; seeded after loading, which draws
    # different numbers of random values under ZeRO-3 than without it
    transformers.set_seed(train_args.seed)
    reference_model = copy.deepcopy(model) if reference == COPY else None  # the starting model, frozen
    model = configure_trainable(model, version, train_args)
    if is_deepspeed_zero3_enabled():
        mark_zero3_leaves(model, version)
    log_settings(model, version, train_set, eval_set, data_args, train_args)
    stop_on_signal = StopOnSignal()
    served, collator = batching(train_set, data_args, train_args, eval_set)
    method = {} if reference is None else {"preference": PreferenceSettings(
        train_args.dpo_beta, train_args.dpo_label_smoothing, train_args.dpo_sft_weight, reference),
        "reference_model": reference_model}
    trainer = (PreferenceTrainer if method else MiniCPMVTrainer)(
        model=model, args=train_args, train_dataset=served, eval_dataset=eval_set, data_collator=collator,
        processing_class=tokenizer, version=version,
        callbacks=[MarkCompleteCheckpoints(identity), stop_on_signal] + list(callbacks or []),
        source_model_dir=source_dir, max_slice_nums=data_args.max_slice_nums,
        module_lrs=module_lrs(version, train_args), **method)
    one_tensorboard_run(trainer, identity)
    try:
        with explain_write_failures(train_args.output_dir, identity_hash(identity)):  # a full disk says so
            interrupted = not train_and_save(trainer, resume, identity, stop_on_signal)
    finally:
        stop_on_signal.restore()
    warn_left_out((("train", train_set), ("eval", eval_set)))
    if stop_on_signal.received and not interrupted:  # after the last step: the finished model was saved
        logger.warning("signal %d arrived after the last step; the finished model was saved to %s",
                       stop_on_signal.received, train_args.output_dir)
    trainer.interrupted_by = stop_on_signal.received if interrupted else None
    return trainer


OTHER_RANKS_REPORT_DELAY_S = 5


def is_reported_error(error: BaseException) -> bool:
    """Our own checks' errors (their message says what to do), not a library's or a bug."""
    if isinstance(error, (DataError, CheckpointWriteError)):
        return True
    if not isinstance(error, ValueError) or error.__traceback__ is None:
        return False
    last_frame = traceback.extract_tb(error.__traceback__)[-1].filename
    return os.path.abspath(last_frame).startswith(HERE + os.sep) and ".venv" not in last_frame


def main(argv=None):
    """finetune.py as a command: a reported problem is one line on stderr and exit status 2
    (the first process prints it); a bare --debug shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    at = argv.index("--debug") if debug else -1
    if debug and (at == len(argv) - 1 or argv[at + 1].startswith("--")):
        del argv[at]  # ours; the Trainer's own --debug takes a value and stays
    try:
        trainer = train(argv)
    except Exception as error:
        if debug or not is_reported_error(error):
            raise
        if int(os.environ.get("RANK", "0")) != 0:
            # The first process usually meets the same problem: give it time to print it and exit,
            # after which the launcher stops this process, so the line appears once.
            time.sleep(OTHER_RANKS_REPORT_DELAY_S)
        print(f"finetune: {error}", file=sys.stderr, flush=True)
        sys.exit(REPORTED_ERROR_EXIT)
    finish_distributed(128 + trainer.interrupted_by if trainer.interrupted_by else 0)


if __name__ == "__main__":
    main()
