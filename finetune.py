"""Fine-tune a MiniCPM-V checkpoint (full or LoRA) on JSON conversations with images.

Read top to bottom: arguments -> checks -> tokenizer, config and data (bad data fails before
any weight is loaded) -> model -> what trains (freezing / LoRA) -> Trainer -> train -> save.
Launch through finetune_ds.sh / finetune_lora.sh; every transformers.TrainingArguments
option is accepted too.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import sys
import time
import traceback
import typing
from collections import Counter
from dataclasses import dataclass, field

import torch
import transformers
from transformers import HfArgumentParser
from transformers.integrations import is_deepspeed_zero3_enabled

from dataset import SupervisedDataset
from minicpmv_ft.checkpoints import (CheckpointWriteError, MarkCompleteCheckpoints, StopOnSignal, checkpoint_step,
                                     explain_write_failures, resolve_resume, wants_resume)
from minicpmv_ft.data_formats import FORMATS
from minicpmv_ft.deepspeed_resume import check_deepspeed_checkpoint
from minicpmv_ft.loading import load_model as load_checkpoint
from minicpmv_ft.loading import load_tokenizer_and_version, local_dir, looks_like_hub_id
from minicpmv_ft.lora_targets import check_lora_targets
from minicpmv_ft.loss_plot import PLOT_FILE, plot_loss
from minicpmv_ft.node_check import node_cores
from minicpmv_ft.packing import PackedDataset, check_packable
from minicpmv_ft.quiet import quiet_third_party
from minicpmv_ft.run_record import (check_new_run, identity_hash, length_changes, output_dir_lock, run_hashes,
                                   run_identity, write_run)
from minicpmv_ft.samples import DataError
from minicpmv_ft.versions import set_max_slice_nums, submodule
from minicpmv_ft.view_cache import check_cache_folder
from minicpmv_ft.zero3_leaves import mark_zero3_leaves
from trainer import MiniCPMVTrainer

logger = logging.getLogger("finetune")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "checkpoint directory or hub id, e.g. openbmb/MiniCPM-V-4_5"})
    llm_type: typing.Optional[str] = field(default=None, metadata={
        "help": "checkpoint version or its alias: 2.0 (minicpm), 2.5 (llama3), 2.6 (qwen, qwen2), 4.0 (llama), "
                "4.5 (qwen3). Default: read from the checkpoint; a value contradicting it is an error"})

    attn_implementation: typing.Optional[str] = field(default=None, metadata={
        "help": "attention of the LLM: eager, sdpa or flash_attention_2 (CUDA, pip install flash-attn; packed "
                "samples then run as variable-length sequences); default: transformers' choice for the "
                "checkpoint (sdpa)"})

    def __post_init__(self):
        if self.attn_implementation not in (None, "eager", "sdpa", "flash_attention_2"):
            raise ValueError(f"--attn_implementation {self.attn_implementation!r}: choose eager, sdpa or "
                             "flash_attention_2")
        if self.attn_implementation == "flash_attention_2" and (
                not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None):
            raise ValueError("--attn_implementation flash_attention_2 needs a CUDA GPU and flash-attn "
                             "(pip install flash-attn); sdpa works everywhere")
        path = self.model_name_or_path
        if not looks_like_hub_id(path) and not os.path.isdir(path):
            raise ValueError(f"--model_name_or_path {path}: no such folder (and not a hub id like openbmb/MiniCPM-V-4_5)")
        if not os.path.isdir(path) and os.path.isdir(path.split("/")[0]):  # "output/modle": a mistyped folder
            raise ValueError(f"--model_name_or_path {path}: no such folder ({path.split('/')[0]}/ is a folder here)")


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "training data: JSON list or JSON Lines file (see README)"})
    eval_data_path: typing.Optional[str] = field(default=None, metadata={
        "help": "evaluation data, same format: its loss is logged at the end of training, and every "
                "--eval_steps with --eval_strategy steps"})
    data_format: str = field(default="auto", metadata={
        "help": "auto (each sample by its keys), native, sharegpt (ShareGPT/LLaVA from/value) or messages "
                "(OpenAI style with images); see README, Data format"})
    image_folder: typing.Optional[str] = field(default=None, metadata={
        "help": "folder that relative image paths start from; default: the data file's folder"})
    max_slice_nums: typing.Optional[int] = field(default=None, metadata={
        "help": "most slices per image (>= 1); default: the checkpoint's (9). Lower saves memory"})
    model_max_length: int = field(default=2048, metadata={
        "help": "tokens per sample, images included; longer samples are truncated, or dropped (and "
                "counted) when the cut would split an image or leave no trained token"})
    skip_bad_samples: bool = field(default=False, metadata={
        "help": "train without the samples that fail the data check (they are counted in the log); "
                "default: any failing sample stops the run before training"})
    verify_images: bool = field(default=False, metadata={
        "help": "decode every image (and the frames of every video) in full before training (check_data.py "
                "--verify_images likewise); default: read each image's header and check the file ends whole"})
    image_cache_dir: typing.Optional[str] = field(default=None, metadata={
        "help": "folder that keeps every image's decoded and sliced views (uint8) after their first use, so "
                "later epochs skip decoding and resizing; checked to fit on its disk before training"})
    video_fps: typing.Optional[float] = field(default=None, metadata={
        "help": "video frames sampled per second; default: the checkpoint's video example (2.6, 4.0: 1; 4.5: 3)"})
    video_max_frames: typing.Optional[int] = field(default=None, metadata={
        "help": "frames per video at most (4.5: before grouping); default 2.6, 4.0: 64; 4.5: 180"})
    video_max_group: typing.Optional[int] = field(default=None, metadata={
        "help": "4.5: frames per group at most, 1-6 (each group is one 64-token block); default 3"})
    video_max_slice_nums: typing.Optional[int] = field(default=None, metadata={
        "help": "2.6, 4.0: slices per video frame; default 2"})
    keep_earlier_reasoning: bool = field(default=False, metadata={
        "help": "thinking models (4.5): keep the reasoning of every assistant turn as a trained think block. "
                "Default: as the chat template, only the last answer carries its reasoning"})

    def __post_init__(self):
        if self.data_format not in FORMATS:
            raise ValueError(f"--data_format {self.data_format!r}: choose one of {', '.join(FORMATS)}")
        if self.image_folder is not None and not os.path.isdir(self.image_folder):
            raise ValueError(f"--image_folder {self.image_folder}: no such folder")
        if self.video_max_group is not None and not 1 <= self.video_max_group <= 6:
            raise ValueError(f"--video_max_group must be 1-6 (the 3-D resampler's groups), got {self.video_max_group}")
        for flag in ("video_fps", "video_max_frames", "video_max_slice_nums"):
            if getattr(self, flag) is not None and getattr(self, flag) <= 0:
                raise ValueError(f"--{flag} must be positive, got {getattr(self, flag)}")
        if self.max_slice_nums is not None and self.max_slice_nums < 1:
            raise ValueError(f"--max_slice_nums must be >= 1, got {self.max_slice_nums}")
        if self.image_cache_dir:
            check_cache_folder(self.image_cache_dir)
        if self.model_max_length < 1:
            raise ValueError(f"--model_max_length must be a positive number of tokens, got {self.model_max_length}")


NATIVE_TRAINING_ARGUMENTS = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    tune_vision: bool = field(default=True, metadata={"help": "train the vision tower (vpm)"})
    tune_llm: typing.Optional[bool] = field(default=None, metadata={
        "help": "train all LLM weights; default true for full fine-tuning, false with --use_lora"})
    use_lora: bool = field(default=False, metadata={"help": "train LoRA adapters on the LLM instead of its weights"})
    q_lora: bool = field(default=False, metadata={"help": "QLoRA: load the LLM in 4-bit (needs CUDA and bitsandbytes)"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input, 0-1"})
    lora_target_modules: typing.Optional[str] = field(default=None, metadata={
        "help": "regex over full module names to adapt; default: the LLM's q/k/v/o projections"})
    lora_modules_to_save: list[str] = field(default_factory=list, metadata={
        "help": "extra modules trained fully and saved with the adapter (resampler always is; the vision "
                "tower with --tune_vision). embed_tokens is trained only if listed here"})
    # MiniCPM-V's forward takes one `data` dict, so columns must not be filtered by signature.
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep False for MiniCPM-V"})
    label_names: typing.Optional[list[str]] = field(default_factory=lambda: ["labels"], metadata={"help": "label keys"})
    # Evaluation reports the loss only; full-vocab logits are never gathered.
    prediction_loss_only: bool = field(default=True, metadata={"help": "keep True: eval computes loss only"})
    loss_chunk_tokens: int = field(default=64, metadata={
        "help": "labelled positions whose logits exist at once in the loss (chunked cross-entropy; the "
                "backward pass recomputes each chunk); smaller saves memory, larger saves a little time"})
    packing: bool = field(default=False, metadata={
        "help": "train on packs of whole samples up to --model_max_length tokens, each sample attending only "
                "to itself (no padding; see README, Packing)"})
    loss_kernel: str = field(default="chunked", metadata={
        "help": "chunked (--loss_chunk_tokens rows of logits at a time, any device) or liger (Liger's fused "
                "linear cross-entropy; CUDA and pip install liger-kernel)"})
    vision_lr: typing.Optional[float] = field(default=None, metadata={
        "help": "learning rate of the vision tower (default: --learning_rate); same schedule"})
    resampler_lr: typing.Optional[float] = field(default=None, metadata={
        "help": "learning rate of the resampler (default: --learning_rate); same schedule"})
    report_to: typing.Union[None, str, list[str]] = field(default="tensorboard", metadata={
        "help": "where to log: tensorboard (OUTPUT_DIR/runs; `tensorboard --logdir OUTPUT_DIR/runs`), none, wandb, ..."})
    dataloader_num_workers: int = field(default=-1, metadata={
        "help": "processes that build batches (decode, slice, normalise, tokenize) while the model trains; "
                "-1: this process's share of the node's cores minus one, at most 8; 0: in the training process"})
    dataloader_persistent_workers: bool = field(default=True, metadata={
        "help": "keep the DataLoader workers from one epoch to the next instead of starting new ones"})
    # transformers 5 dropped these (warmup_steps < 1 is a ratio there; --train_sampling_strategy
    # replaced group_by_length); the launchers and our runs use them in both environments
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of the steps that warm the learning rate up"})
    group_by_length: bool = field(default=False, metadata={
        "help": "batch samples of similar token counts together (less padding), by the data check's counts"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start a new run in an output folder that holds another run's checkpoints (see README, Resuming)"})
    gradient_checkpointing_kwargs: typing.Optional[dict] = field(
        default_factory=lambda: {"use_reentrant": False}, metadata={"help": "kwargs for gradient checkpointing"})

    def __post_init__(self):
        if self.warmup_ratio and "warmup_ratio" not in NATIVE_TRAINING_ARGUMENTS and not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio  # transformers 5: a float below 1 is the ratio
        if self.ddp_find_unused_parameters is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            self.ddp_find_unused_parameters = False  # one process: nothing to synchronise, only a warning to print
        if self.dataloader_num_workers < 0:
            self.dataloader_num_workers = min(8, check_workers() - 1)
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False  # nothing to keep; the DataLoader refuses the flag
        # Before the Trainer's own checks: with --deepspeed they set up process-wide DeepSpeed state.
        if (self.vision_lr is not None or self.resampler_lr is not None) and "optimizer" in deepspeed_config(self):
            raise ValueError(f"--vision_lr / --resampler_lr need the Trainer's optimizer, but {self.deepspeed} has "
                             "an \"optimizer\" block (DeepSpeed would build its own, with one learning rate); "
                             "remove the block or the per-module rates")
        super().__post_init__()
        for flag in ("gradient_accumulation_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "loss_chunk_tokens"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        self._check_lora_and_rates()
        if self.loss_kernel not in ("chunked", "liger"):
            raise ValueError(f"--loss_kernel {self.loss_kernel!r}: choose chunked or liger")
        if self.loss_kernel == "liger" and (not torch.cuda.is_available()
                                            or importlib.util.find_spec("liger_kernel") is None):
            raise ValueError("--loss_kernel liger needs a CUDA GPU and liger-kernel (pip install liger-kernel); "
                             "--loss_kernel chunked works everywhere")
        if self.packing and self.group_by_length:
            raise ValueError("--packing and --group_by_length both arrange samples by length; use one")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(f"--num_train_epochs {self.num_train_epochs} trains nothing; give a positive "
                             "--num_train_epochs or --max_steps")
        if self.output_dir:
            check_output_dir(self.output_dir)
        if self.use_lora and self.tune_llm:
            raise ValueError("--use_lora true with --tune_llm true would train all LLM weights as well as the "
                             "adapters; use --tune_llm false (the LoRA default) or drop --use_lora")
        if self.q_lora and not self.use_lora:
            raise ValueError("--q_lora true needs --use_lora true")
        if self.q_lora and not torch.cuda.is_available():
            raise ValueError("--q_lora true needs a CUDA GPU (bitsandbytes 4-bit); use --use_lora without --q_lora on CPU")
        if self.q_lora and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("--q_lora true needs bitsandbytes: pip install bitsandbytes")
        if self.q_lora and zero_stage(self) == 3:
            raise ValueError("--q_lora true does not work with ZeRO-3 (4-bit weights cannot be partitioned); "
                             "use ds_config_zero2.json")

    def _check_lora_and_rates(self):
        if self.lora_r < 1:
            raise ValueError(f"--lora_r must be >= 1 (the adapters' rank), got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha must be positive (scale = alpha / r), got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout is a probability in [0, 1), got {self.lora_dropout}")
        if self.lora_target_modules is not None:
            try:
                re.compile(self.lora_target_modules)
            except re.error as error:
                raise ValueError(f"--lora_target_modules {self.lora_target_modules!r} is not a regular expression: "
                                 f"{error}") from None
        for flag in ("vision_lr", "resampler_lr"):
            rate = getattr(self, flag)
            if rate is not None and rate <= 0:
                raise ValueError(f"--{flag} must be positive, got {rate} (a negative rate ascends the loss); to "
                                 "freeze the vision tower use --tune_vision false")
        if self.vision_lr is not None and not self.tune_vision:
            raise ValueError("--vision_lr with --tune_vision false: the vision tower is frozen, nothing uses the "
                             "rate; drop one of them")

    @property
    def trains_llm(self) -> bool:
        """--tune_llm, defaulting to true for full fine-tuning and false with LoRA."""
        return (not self.use_lora) if self.tune_llm is None else self.tune_llm


def check_output_dir(path: str):
    """ValueError unless `path` is, or can be created as, a writable folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output_dir {path} is a file, not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise ValueError(f"--output_dir {path}: {existing} is not a writable folder")


def parse_arguments(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    _init_cpu_deepspeed(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(argv)
    return model_args, data_args, train_args


def _init_cpu_deepspeed(argv):
    """DeepSpeed on CPU (tests, CI) needs the gloo process group before TrainingArguments is
    built; otherwise ZeRO-3's zero.Init inside from_pretrained sees a world of one."""
    uses_deepspeed = any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)
    if uses_deepspeed and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def deepspeed_config(train_args) -> dict:
    config = train_args.deepspeed
    if isinstance(config, str):
        with open(config) as handle:
            return json.load(handle)
    return config or {}


def zero_stage(train_args) -> int:
    return int(deepspeed_config(train_args).get("zero_optimization", {}).get("stage", 0))


def check_version_supported(version, config, train_args, world_size: int):
    """Combinations that would hang rather than fail, refused before any weight is loaded."""
    per_image = version.vision_call_per_image or not getattr(config, "batch_vision_input", True)
    if per_image and zero_stage(train_args) == 3 and world_size > 1:
        raise ValueError(
            f"{version.checkpoints} runs its vision tower once per image; under ZeRO-3 every run is a "
            "collective weight gather, so processes holding different numbers of images deadlock. "
            "Use ds_config_zero2.json (optimizer offload saves memory there too)")


def check_video_supported(version, train_set, train_args, world_size: int):
    """4.5's 3-D resampler runs its attention once per group of video frames: refused where
    processes would hold different numbers of groups under ZeRO-3 (a hang, as for 2.0)."""
    has_video = any(report.videos for report in train_set.reports)
    if has_video and version.video.grouped and zero_stage(train_args) == 3 and world_size > 1:
        raise ValueError(
            f"{version.checkpoints} runs its resampler once per group of video frames; under ZeRO-3 every run is a "
            "collective weight gather, so processes holding different numbers of groups deadlock. Use "
            "ds_config_zero2.json for video data (optimizer offload saves memory there too)")


def model_dtype(train_args) -> torch.dtype:
    return torch.bfloat16 if train_args.bf16 else torch.float16 if train_args.fp16 else torch.float32


def check_workers() -> int:
    """This process's share of the node's cores: the data check's processes when it checks alone
    (several processes on a node check once, with all of them: node_check.py), and the basis of
    the DataLoader worker default."""
    return max(1, node_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def video_scheme(version, data_args):
    """The version's video sampling with the --video_* options applied (None: the version's own)."""
    options = {"fps": data_args.video_fps, "max_frames": data_args.video_max_frames,
               "max_group": data_args.video_max_group, "max_slice_nums": data_args.video_max_slice_nums}
    options = {key: value for key, value in options.items() if value is not None}
    if not options:
        return None
    if version.video is None:
        raise ValueError(f"--video_* options: MiniCPM-V {version.name} takes no video")
    if version.video.grouped and options.get("max_slice_nums", 1) != 1:
        raise ValueError("--video_max_slice_nums: 4.5 groups whole frames, one view each; leave it out")
    if not version.video.grouped and "max_group" in options:
        raise ValueError(f"--video_max_group: MiniCPM-V {version.name} does not group frames (4.5 does)")
    return dataclasses.replace(version.video, **options)


def load_datasets(version, data_args, tokenizer, config, num_workers=1):
    common = {"version": version, "video": video_scheme(version, data_args), "max_slice_nums": data_args.max_slice_nums,
              "model_max_length": data_args.model_max_length, "skip_bad_samples": data_args.skip_bad_samples,
              "verify_images": data_args.verify_images, "num_workers": max(1, num_workers),
              "keep_earlier_reasoning": data_args.keep_earlier_reasoning, "data_format": data_args.data_format,
              "base_dir": data_args.image_folder, "image_cache_dir": data_args.image_cache_dir}
    train_set = SupervisedDataset(data_args.data_path, tokenizer, config, **common)
    eval_set = SupervisedDataset(data_args.eval_data_path, tokenizer, config, **common) if data_args.eval_data_path else None
    return train_set, eval_set


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
                        target_modules=train_args.lora_target_modules or version.lora_target_regex,
                        modules_to_save=modules_to_save)
    return get_peft_model(model, config)


def log_settings(model, version, train_set, eval_set, data_args, train_args):
    def numel(p):
        return getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions parameters

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    settings = train_set.settings
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    # 4.6's processor sizes each view's placeholder itself (query_num 0: none fixed)
    tokens = f"query_num={settings.query_num}" if settings.query_num else "tokens per view set by its processor"
    logger.info("MiniCPM-V %s (%s), %s, max_slice_nums=%d, scale_resolution=%d, image ids=%s, model_max_length=%d",
                version.name, version.checkpoints, tokens, settings.max_slice_nums, settings.scale_resolution,
                settings.use_image_id, data_args.model_max_length)
    logger.info("data loading: %d worker processes%s, pin_memory=%s, image cache: %s",
                train_args.dataloader_num_workers, " (persistent)" * train_args.dataloader_persistent_workers,
                train_args.dataloader_pin_memory, data_args.image_cache_dir or "off")
    for name, ds in (("train", train_set), ("eval", eval_set)):
        if ds is not None:
            logger.info("%s data: %d samples used, %d dropped, %d failing samples skipped", name, len(ds),
                        len(ds.dropped), len(ds.failed))


def warn_left_out(datasets):
    """The last word of a run that trained without some samples, so it is not scrolled away."""
    for name, ds in datasets:
        if ds is None or not (ds.dropped or ds.failed):
            continue
        reasons = Counter(reason.split(": ")[0] for _, _, reason in ds.dropped + ds.failed)  # without the paths
        logger.warning("%s data: %d of %d samples were left out: %s (the log's start lists them; check_data.py "
                       "shows all)", name, len(ds.dropped) + len(ds.failed), len(ds.reports),
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
    with output_dir_lock(train_args.output_dir):
        return run_training(model_args, data_args, train_args, callbacks)


def batching(train_set, data_args, train_args, eval_set=None):
    """(what the Trainer samples from, the collator): packs of samples laid end to end in one row
    with --packing, else the samples, right-padded per micro-batch. The Trainer collates eval
    batches with the same collator, so grouped videos in either set decide the one-row batches."""
    if train_args.packing:
        return PackedDataset(train_set, data_args.model_max_length), train_set.packed_collator
    if train_set.version.vision_split_by_frames and any(
            video["groups"] < video["frames"] for ds in (train_set, eval_set) if ds is not None
            for report in ds.reports for video in report.videos):
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
    if 0 < max_steps <= step:
        logger.warning("%s is already at --max_steps %d: nothing is left to train; the final model is saved "
                       "again from it", checkpoint, max_steps)


def evaluated_last_step(trainer) -> bool:
    step = trainer.state.global_step
    return any("eval_loss" in entry and entry.get("step") == step for entry in trainer.state.log_history)


def train_and_save(trainer, resume, identity, stop_on_signal) -> bool:
    """Trains and saves the final model, then runs the final evaluation (a failure there keeps
    the saved model); False when a signal stopped training at a checkpoint."""
    trainer.train(resume_from_checkpoint=resume)
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
    if not finished:
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
    check_version_supported(version, config, train_args, int(os.environ.get("WORLD_SIZE", "1")))
    if train_args.use_lora:
        check_lora_targets(config, version, train_args.lora_target_modules)
    if data_args.keep_earlier_reasoning and not version.chat.thinking:
        raise ValueError(f"--keep_earlier_reasoning: MiniCPM-V {version.name} has no thinking blocks to keep; "
                         "drop the flag")
    if train_args.packing:
        check_packable(config, version.checkpoints)
    train_set, eval_set = load_datasets(version, data_args, tokenizer, config, check_workers())
    check_video_supported(version, train_set, train_args, int(os.environ.get("WORLD_SIZE", "1")))
    model = load_model(model_args, train_args, version, model_dtype(train_args))
    if data_args.max_slice_nums is not None:  # saved with the model, so its chat() slices as training did
        set_max_slice_nums(model.config, version, data_args.max_slice_nums)
    # LoRA adapters are initialised before the Trainer seeds; seeded after loading, which draws
    # different numbers of random values under ZeRO-3 than without it
    transformers.set_seed(train_args.seed)
    model = configure_trainable(model, version, train_args)
    if is_deepspeed_zero3_enabled():
        mark_zero3_leaves(model, version)
    log_settings(model, version, train_set, eval_set, data_args, train_args)
    stop_on_signal = StopOnSignal()
    served, collator = batching(train_set, data_args, train_args, eval_set)
    trainer = MiniCPMVTrainer(model=model, args=train_args, train_dataset=served, eval_dataset=eval_set,
                              data_collator=collator, processing_class=tokenizer,
                              version=version,
                              callbacks=[MarkCompleteCheckpoints(identity), stop_on_signal] + list(callbacks or []),
                              source_model_dir=local_dir(model_args.model_name_or_path),
                              max_slice_nums=data_args.max_slice_nums, module_lrs=module_lrs(version, train_args))
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


# Exit status of a run stopped by a reported problem (bad data, arguments, full disk): the
# launcher recognises it and adds no torchrun error banner to the one-line message.
REPORTED_ERROR_EXIT = 2
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
