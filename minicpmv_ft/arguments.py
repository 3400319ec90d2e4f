"""The command-line arguments of fine-tuning, the one declaration finetune.py and check_data.py
both parse (check_data.py takes ModelArguments and DataArguments), and which of them make a run
what it is: a resume must match those (RESULT_ARGUMENTS; minicpmv_ft/run_record.py).

Every field declared here says its role in its metadata (RESULT, ENCODING, DPO, DATA_FILE,
NEUTRAL); the lists a resume, the reference file's header and --method dpo use are derived from
them, and a test fails on a field without one, so a new option has to say what it is to a run.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field

import torch
import transformers

from .data_formats import FORMATS
from .encoding import DEFAULT_MODEL_MAX_LENGTH
from .loading import check_model_path
from .node_check import node_cores
from .option_packages import check_optimizer, check_reporters
from .preference_loss import DEFAULT_BETA, check_settings
from .preference_reference import check_reference_choice
from .run_record import file_fingerprint
from .versions import names_where, version_choices, video_defaults
from .view_cache import check_cache_folder


# What each option of ours is to a run, declared in its field's metadata ("role"); the lists a
# resume, the reference file and --method check are derived from these (options_with), and a
# test fails on an option without one.
RESULT = "result"  # changes the trained weights: a resume must match it
ENCODING = "encoding"  # changes how a sample is encoded (a result too): also in the reference file's header
DPO = "dpo"  # an option of --method dpo (a result too)
DATA_FILE = "data file"  # a data file: the run identity holds its content's fingerprint
NEUTRAL = "neutral"  # how the run is checked, logged, cached or computed: free to change on a resume
ROLES = (RESULT, ENCODING, DPO, DATA_FILE, NEUTRAL)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"role": RESULT,
        "help": "checkpoint directory or hub id, e.g. openbmb/MiniCPM-V-4_5"})
    llm_type: typing.Optional[str] = field(default=None, metadata={"role": NEUTRAL,
        "help": f"checkpoint version or its alias: {version_choices()}. Default: read from the checkpoint; "
                "a value contradicting it is an error"})

    attn_implementation: typing.Optional[str] = field(default=None, metadata={"role": NEUTRAL,
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
        check_model_path(self.model_name_or_path, "--model_name_or_path", adapter_ok=False)


class ArgumentParser(transformers.HfArgumentParser):
    """HfArgumentParser whose usage errors are one line (argparse prints the whole usage, 150
    lines for finetune.py's options, above the error)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")

    @staticmethod
    def _parse_dataclass_field(parser, field):
        """transformers' own, given the field's metadata without its role (the metadata becomes
        argparse's keywords)."""
        if "role" in field.metadata:
            field = copy.copy(field)
            field.metadata = types.MappingProxyType({key: value for key, value in field.metadata.items()
                                                     if key != "role"})
        transformers.HfArgumentParser._parse_dataclass_field(parser, field)


def check_numbers(arguments, at_least_zero=()):
    """ValueError for a float option that is NaN or infinite, or one of `at_least_zero` below 0,
    before anything loads: NaN passes every comparison after this (a NaN rate trains a NaN model
    and exits 0; a NaN --max_grad_norm turns clipping off)."""
    for option in dataclasses.fields(arguments):
        value = getattr(arguments, option.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{option.name} {value}: give a finite number")
    for name in at_least_zero:
        if getattr(arguments, name) < 0:
            raise ValueError(f"--{name} must be 0 or more, got {getattr(arguments, name)}")


@dataclass
class DataArguments:
    data_path: str = field(metadata={"role": DATA_FILE,
        "help": "training data: a JSON list, JSON Lines or Parquet file (images as bytes "
                                             "inside, as Hugging Face datasets keep them); docs/data.md"})
    eval_data_path: typing.Optional[str] = field(default=None, metadata={"role": DATA_FILE,
        "help": "evaluation data, same format: its loss is logged at the end of training, and every "
                "--eval_steps with --eval_strategy steps"})
    data_format: str = field(default="auto", metadata={"role": ENCODING,
        "help": "auto (each sample by its keys), native, sharegpt (ShareGPT/LLaVA from/value) or messages "
                "(OpenAI style with images); docs/data.md"})
    image_folder: typing.Optional[str] = field(default=None, metadata={"role": ENCODING,
        "help": "folder that relative image paths start from; default: the data file's folder"})
    max_slice_nums: typing.Optional[int] = field(default=None, metadata={"role": ENCODING,
        "help": "most slices per image (>= 1); default: the checkpoint's (9). Lower saves memory and tokens. "
                "Saved with the result (config, processor config; an adapter's minicpmv_settings.json), so its "
                "chat(), chat.py and predict.py slice as training did"})
    model_max_length: int = field(default=DEFAULT_MODEL_MAX_LENGTH, metadata={"role": ENCODING,
        "help": "tokens per sample, images included; longer samples are truncated, or dropped (and "
                "counted) when the cut would split an image or leave no trained token"})
    skip_bad_samples: bool = field(default=False, metadata={"role": NEUTRAL,
        "help": "train without the samples that fail the data check or fail to load while training (they are "
                "counted in the log); default: a failing sample stops the run, before training or with a "
                "checkpoint of the steps done"})
    verify_images: bool = field(default=False, metadata={"role": NEUTRAL,
        "help": "decode every image (and the frames of every video) in full before training (check_data.py "
                "--verify_images likewise); default: read each image's header and check the file ends whole"})
    image_cache_dir: typing.Optional[str] = field(default=None, metadata={"role": NEUTRAL,
        "help": "folder that keeps every image's decoded and sliced views (uint8) after their first use, so "
                "later epochs skip decoding and resizing (videos: the sampled frames' views); checked to fit on its "
                "disk before training. Several runs may share one folder, at once too: entries are keyed by the "
                "file (path, modification and change time, inode, size) and the slicing settings, written "
                "atomically and checksummed (a damaged one is rebuilt)"})
    video_fps: typing.Optional[float] = field(default=None, metadata={"role": ENCODING,
        "help": f"video frames sampled per second; default: the checkpoint's video example ({video_defaults('fps')})"})
    video_max_frames: typing.Optional[int] = field(default=None, metadata={"role": ENCODING,
        "help": "frames per video at most (grouped frames: before grouping); default "
                f"{video_defaults('max_frames')}"})
    video_max_group: typing.Optional[int] = field(default=None, metadata={"role": ENCODING,
        "help": f"frames per group at most, 1-6 (each group is one 64-token block), for the versions that group "
                f"frames; default {video_defaults('max_group', ('grouped',))}"})
    video_max_slice_nums: typing.Optional[int] = field(default=None, metadata={"role": ENCODING,
        "help": f"slices per video frame, for the versions that slice frames; default "
                f"{video_defaults('max_slice_nums', ('stride', 'processor'))}"})
    keep_earlier_reasoning: bool = field(default=False, metadata={"role": ENCODING,
        "help": f"thinking models ({names_where(lambda v: v.chat.thinking)}): keep the reasoning of every assistant "
                "turn as a trained think block. Default: as the chat template, only the last answer carries its "
                "reasoning"})

    def __post_init__(self):
        check_numbers(self)
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
# transformers 5's names for options the launchers pass by their 4.57 names (old, new)
RENAMED_IN_TRANSFORMERS_5 = (("gradient_checkpointing", "activation_checkpointing"),
                             ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"))


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    tune_vision: bool = field(default=True, metadata={"role": RESULT, "help": "train the vision tower (vpm)"})
    tune_llm: typing.Optional[bool] = field(default=None, metadata={"role": RESULT,
        "help": "train all LLM weights; default true for full fine-tuning, false with --use_lora"})
    use_lora: bool = field(default=False, metadata={"role": RESULT,
        "help": "train LoRA adapters on the LLM instead of its weights"})
    q_lora: bool = field(default=False, metadata={"role": RESULT,
        "help": "QLoRA: load the LLM in 4-bit (needs CUDA and bitsandbytes; not with ZeRO-3)"})
    lora_r: int = field(default=64, metadata={"role": RESULT, "help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={"role": RESULT, "help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"role": RESULT, "help": "dropout on the LoRA input, 0-1"})
    lora_target_modules: typing.Optional[str] = field(default=None, metadata={"role": RESULT,
        "help": "regex over full module names to adapt; default: the LLM's attention projections (and its "
                "linear-attention ones where it has them); naming a mixture-of-experts module that keeps its experts "
                "fused (e.g. mlp\\.experts) adapts each expert's weights (with --lora_dropout 0: their LoRA takes no "
                "dropout)"})
    lora_modules_to_save: list[str] = field(default_factory=list, metadata={"role": RESULT,
        "help": "extra modules trained fully and saved with the adapter (resampler always is; the vision "
                "tower with --tune_vision). embed_tokens is trained only if listed here"})
    # MiniCPM-V's forward takes one `data` dict, so columns must not be filtered by signature.
    remove_unused_columns: bool = field(default=False, metadata={"role": NEUTRAL, "help": "keep False for MiniCPM-V"})
    label_names: typing.Optional[list[str]] = field(default_factory=lambda: ["labels"], metadata={"role": NEUTRAL,
        "help": "label keys"})
    # Evaluation reports the loss only; full-vocab logits are never gathered.
    prediction_loss_only: bool = field(default=True, metadata={"role": NEUTRAL,
        "help": "keep True: eval computes loss only"})
    loss_chunk_tokens: int = field(default=64, metadata={"role": NEUTRAL,
        "help": "labelled positions whose logits exist at once in the loss (chunked cross-entropy; the "
                "backward pass recomputes each chunk); smaller saves memory, larger saves a little time"})
    packing: bool = field(default=False, metadata={"role": RESULT,
        "help": "train on packs of whole samples up to --model_max_length tokens, each sample attending only "
                "to itself (no padding; docs/training.md, Packing)"})
    loss_kernel: str = field(default="chunked", metadata={"role": NEUTRAL,
        "help": "chunked (--loss_chunk_tokens rows of logits at a time, any device) or liger (Liger's fused "
                "linear cross-entropy; CUDA and pip install liger-kernel)"})
    vision_lr: typing.Optional[float] = field(default=None, metadata={"role": RESULT,
        "help": "learning rate of the vision tower (default: --learning_rate): a param group of its own on the "
                "same schedule, logged as learning_rate_vision, restored on resume (not with a DeepSpeed optimizer block)"})
    resampler_lr: typing.Optional[float] = field(default=None, metadata={"role": RESULT,
        "help": "learning rate of the resampler (default: --learning_rate), as --vision_lr; logged as "
                "learning_rate_resampler"})
    report_to: typing.Union[None, str, list[str]] = field(default="tensorboard", metadata={"role": NEUTRAL,
        "help": "where to log: tensorboard (OUTPUT_DIR/runs; `tensorboard --logdir OUTPUT_DIR/runs`), none, wandb, ..."})
    dataloader_num_workers: int = field(default=-1, metadata={"role": NEUTRAL,
        "help": "processes that build batches (decode, slice, normalise, tokenize) while the model trains; "
                "-1: this process's share of the node's cores minus one, at most 8; 0: in the training process"})
    dataloader_persistent_workers: bool = field(default=True, metadata={"role": NEUTRAL,
        "help": "keep the DataLoader workers from one epoch to the next instead of starting new ones"})
    # transformers 5 dropped these (warmup_steps < 1 is a ratio there; --train_sampling_strategy
    # replaced group_by_length); the launchers and our runs use them in both environments
    warmup_ratio: float = field(default=0.0, metadata={"role": RESULT,
        "help": "share of the steps that warm the learning rate up"})
    group_by_length: bool = field(default=False, metadata={"role": RESULT,
        "help": "batch samples of similar token counts together (less padding), by the data check's counts (no "
                "item is built to measure them); not with --packing"})
    overwrite_output_dir: bool = field(default=False, metadata={"role": NEUTRAL,
        "help": "start a new run in an output folder that holds another run's checkpoints (docs/training.md, Interrupting and resuming)"})
    gradient_checkpointing_kwargs: typing.Optional[dict] = field(
        default_factory=lambda: {"use_reentrant": False}, metadata={"role": NEUTRAL,
        "help": "kwargs for gradient checkpointing"})
    method: str = field(default="sft", metadata={"role": RESULT,
        "help": "sft (conversations: train on their answers) or dpo (preference pairs: a prompt, a chosen and a "
                "rejected answer; README, Preference tuning)"})
    dpo_beta: float = field(default=DEFAULT_BETA, metadata={"role": DPO,
        "help": "DPO's beta: how far the trained model may move from the reference (smaller: further)"})
    dpo_label_smoothing: float = field(default=0.0, metadata={"role": DPO,
        "help": "share of pairs assumed mislabelled, in [0, 0.5) (conservative DPO); 0: plain sigmoid DPO"})
    dpo_sft_weight: float = field(default=0.0, metadata={"role": DPO,
        "help": "weight of an SFT term added to each pair's loss: the chosen answer's mean token cross-entropy"})
    dpo_reference: str = field(default="auto", metadata={"role": DPO,
        "help": "reference log-probs: auto (the data's when every pair has them, else with LoRA the model with "
                "its adapters off), data, adapter_off (LoRA) or copy (a frozen copy of the model in memory)"})

    def __post_init__(self):
        check_numbers(self, at_least_zero=("learning_rate", "weight_decay", "max_grad_norm"))
        # a TensorBoard folder the user named (transformers 4.57's --logging_dir, 5's environment
        # variable) is kept; else the run gets one of its own (finetune.one_tensorboard_run)
        self.tensorboard_folder_chosen = bool(getattr(self, "logging_dir", None) or os.getenv("TENSORBOARD_LOGGING_DIR"))
        # Before the Trainer's own checks: with --deepspeed they set up process-wide DeepSpeed state.
        deepspeed = self._check_before_the_trainer()
        self._settle_defaults()
        try:
            super().__post_init__()
        except ValueError as error:  # the Trainer's own checks of its options: one line, as ours
            raise ValueError(str(error)) from None
        check_reporters(self.report_to)
        if "optimizer" not in deepspeed:
            check_optimizer(self)
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
        self._check_method()
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

    def _check_before_the_trainer(self) -> dict:
        """The checks that must come before the Trainer's; returns the DeepSpeed config ({} without)."""
        if not 0 <= self.warmup_ratio <= 1:  # transformers 5 would take 2 as 2 warm-up steps
            raise ValueError(f"--warmup_ratio is the share of the steps that warm up, 0-1; got {self.warmup_ratio}")
        if isinstance(self.deepspeed, str) and self.deepspeed.endswith(".json") and not os.path.isfile(self.deepspeed):
            raise ValueError(f"--deepspeed {self.deepspeed}: no such file (this project's: ds_config_zero2.json, "
                             "ds_config_zero3.json)")
        if (self.bf16 or self.fp16) and not self.use_cpu and not torch.cuda.is_available():
            raise ValueError(f"no CUDA GPU found, and --{'bf16' if self.bf16 else 'fp16'} true (the launchers' default) "
                             "needs one; on a CPU, add --use_cpu true --bf16 false (docs/training.md, \"On a CPU or "
                             "a laptop\")")
        if self.save_strategy == "steps" and self.save_steps == 0:
            raise ValueError("--save_steps 0 would save no checkpoint until the end; give a number of steps, or "
                             "--save_strategy no")
        deepspeed = deepspeed_config(self)
        if (self.vision_lr is not None or self.resampler_lr is not None) and "optimizer" in deepspeed:
            raise ValueError(f"--vision_lr / --resampler_lr need the Trainer's optimizer, but {self.deepspeed} has "
                             "an \"optimizer\" block (DeepSpeed would build its own, with one learning rate); "
                             "remove the block or the per-module rates")
        return deepspeed

    def _settle_defaults(self):
        """Our defaults that depend on the environment, set before the Trainer reads them."""
        for old, new in RENAMED_IN_TRANSFORMERS_5:  # the launchers' --gradient_checkpointing, without its FutureWarning
            if new in NATIVE_TRAINING_ARGUMENTS and getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
                setattr(self, old, None)  # the Trainer mirrors the new name into it
        if self.warmup_ratio and "warmup_ratio" not in NATIVE_TRAINING_ARGUMENTS and not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio  # transformers 5: a float below 1 is the ratio
        if self.ddp_find_unused_parameters is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            self.ddp_find_unused_parameters = False  # one process: nothing to synchronise, only a warning to print
        if self.dataloader_num_workers < 0:
            self.dataloader_num_workers = min(8, check_workers() - 1)
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False  # nothing to keep; the DataLoader refuses the flag

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

    def _check_method(self):
        if self.method not in ("sft", "dpo"):
            raise ValueError(f"--method {self.method!r}: choose sft or dpo")
        check_reference_choice(self.dpo_reference)
        if self.method != "dpo":
            changed = [name for name in DPO_ARGUMENTS if getattr(self, name) != self.__dataclass_fields__[name].default]
            if changed:
                raise ValueError(f"--{changed[0]} is an option of --method dpo; this run is --method {self.method}")
            return
        check_settings(self.dpo_beta, self.dpo_label_smoothing)
        if self.dpo_sft_weight < 0:
            raise ValueError(f"--dpo_sft_weight must be >= 0, got {self.dpo_sft_weight}")
        if self.packing:
            raise ValueError("--packing with --method dpo: a pair's two answers are scored side by side in padded "
                             "rows; drop --packing")
        if self.loss_kernel == "liger":
            raise ValueError("--loss_kernel liger sums the loss over the tokens, and DPO needs each answer's own "
                             "log-probability; use --loss_kernel chunked")

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


def deepspeed_config(train_args) -> dict:
    config = train_args.deepspeed
    if isinstance(config, str):
        with open(config) as handle:
            return json.load(handle)
    return config or {}


def zero_stage(train_args) -> int:
    return int(deepspeed_config(train_args).get("zero_optimization", {}).get("stage", 0))


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
        raise ValueError(f"--video_max_slice_nums: MiniCPM-V {version.name} groups whole frames, one view each; "
                         "leave it out")
    if version.video.by_processor and "fps" in options:
        raise ValueError(f"--video_fps: MiniCPM-V {version.name}'s video processor takes one frame a second (its "
                         "sample_frames); leave it out")
    if not version.video.grouped and "max_group" in options:
        raise ValueError(f"--video_max_group: MiniCPM-V {version.name} does not group frames (only "
                         f"{names_where(lambda v: v.video and v.video.grouped)} do)")
    return dataclasses.replace(version.video, **options)


def options_with(*roles) -> tuple[str, ...]:
    """The names of our options whose declared role is one of `roles`, in declaration order."""
    return tuple(option.name for arguments in (ModelArguments, DataArguments, TrainingArguments)
                 for option in dataclasses.fields(arguments) if option.metadata.get("role") in roles)


# What a resume must match (minicpmv_ft/run_record.py): the arguments that change the weights a
# run produces. transformers' own TrainingArguments fields (the optimizer, schedule, batch,
# precision and seed: theirs carry no role of ours), then ours. The data files count by their
# content's fingerprint.
TRANSFORMERS_RESULT_ARGUMENTS = (
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
    "optim_args", "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "data_seed", "bf16", "fp16",
    "label_smoothing_factor", "neftune_noise_alpha",
)
RESULT_ARGUMENTS = TRANSFORMERS_RESULT_ARGUMENTS + options_with(RESULT, ENCODING, DPO)
ENCODING_OPTIONS = options_with(ENCODING)  # the reference file's header holds them (reference_file.py)
DPO_ARGUMENTS = options_with(DPO)
FINGERPRINTED_FILES = {name: name.removesuffix("_path") for name in options_with(DATA_FILE)}  # -> identity key
RUN_NEUTRAL_ARGUMENTS = options_with(NEUTRAL)


def run_identity(*argument_sets) -> dict:
    """The result-changing arguments of a run, and its data files' fingerprints (None: no file)."""
    identity = {}
    for arguments in argument_sets:
        for name in RESULT_ARGUMENTS:
            if hasattr(arguments, name):
                value = getattr(arguments, name)
                value = getattr(value, "value", value)  # transformers' enums: their string
                identity[name] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
        for name, key in FINGERPRINTED_FILES.items():
            if hasattr(arguments, name):
                path = getattr(arguments, name)
                identity[key] = file_fingerprint(path) if path and os.path.isfile(path) else None
    return identity
