"""The reference pass of preference tuning: each pair's chosen and rejected answer log-probs under
the starting model, computed once and written next to the data, so that `finetune.py --method
dpo` needs no second model and no second forward per step.

    python reference_logps.py --model_name_or_path openbmb/MiniCPM-V-4_5 --data_path pairs.json
    # -> pairs.reference_logps.jsonl (and one for --eval_data_path); then train with the same
    #    model, data and data options: the run finds and checks the file

It takes finetune.py's model and data options (the ones that change how a pair is encoded must
be the training run's) and runs on one device. Stopped, it keeps what it wrote: run it again to
compute the rest. A file computed for another model, data or encoding is refused
(minicpmv_ft/reference_file.py).
"""
from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass, field

import torch

from dpo_trainer import PreferenceSettings, PreferenceTrainer
from finetune import is_reported_error, load_datasets
from minicpmv_ft import reference_file
from minicpmv_ft.arguments import ArgumentParser, DataArguments, ModelArguments, TrainingArguments, check_workers
from minicpmv_ft.errors import DataError
from minicpmv_ft.launch import REPORTED_ERROR_EXIT
from minicpmv_ft.loading import load_model, load_tokenizer_and_version, local_dir
from minicpmv_ft.quiet import quiet_third_party

logger = logging.getLogger("reference_logps")


@dataclass
class PassArguments:
    batch_size: int = field(default=4, metadata={"help": "pairs per forward pass"})
    use_cpu: bool = field(default=not torch.cuda.is_available(), metadata={
        "help": "run on the CPU (default where there is no GPU); else on the first GPU"})
    bf16: bool = field(default=torch.cuda.is_available(), metadata={
        "help": "bfloat16 weights, as training with --bf16 true (default on CUDA); false: float32"})


def compute(model_args, data_args, pass_args) -> dict[str, int]:
    """Writes the reference file of the training (and eval) data; {file: pairs computed now}."""
    tokenizer, config, version = load_tokenizer_and_version(model_args.model_name_or_path, model_args.llm_type)
    datasets = load_datasets(version, data_args, tokenizer, config, check_workers(), "dpo")
    folder = local_dir(model_args.model_name_or_path) or model_args.model_name_or_path
    model, trainer, computed = None, None, {}
    scratch = tempfile.TemporaryDirectory(prefix="reference_logps_")  # the trainer's output_dir; it writes nothing
    for dataset, path in zip(datasets, (data_args.data_path, data_args.eval_data_path)):
        if dataset is None:
            continue
        target = reference_file.reference_path(path)
        expected = reference_file.header(folder, path, data_args, dataset)
        done, _ = reference_file.read(target, expected)  # a pair that failed is tried again
        todo = [i for i, index in enumerate(dataset.kept) if index not in done]
        logger.info("%s: %d of %d pairs to compute", target, len(todo), len(dataset))
        computed[target] = len(todo)
        if not todo:
            continue
        if model is None:
            model = load_model(model_args.model_name_or_path, version,
                               torch.bfloat16 if pass_args.bf16 else torch.float32,
                               **({"attn_implementation": model_args.attn_implementation}
                                  if model_args.attn_implementation else {}))
            trainer = pass_trainer(model, version, tokenizer, pass_args, scratch.name)
        with reference_file.start(target, expected, done) as handle:
            for start in range(0, len(todo), pass_args.batch_size):
                served, items, failed = readable_pairs(dataset, todo[start:start + pass_args.batch_size])
                logps = trainer.answer_logps(model, trainer._prepare_inputs(dataset.collator(items))).tolist() \
                    if items else []
                reference_file.append(handle, {dataset.kept[i]: (logps[k], logps[k + len(served)])
                                               for k, i in enumerate(served)}, failed)
    scratch.cleanup()
    return computed


def readable_pairs(dataset, indices) -> tuple[list, list, dict]:
    """(served indices, their items, pair index -> reason for those that failed to load): a
    failing pair stops the pass (its DataError) unless the data options skip bad samples; then
    its line says so, and training skips it too."""
    served, items, failed = [], [], {}
    for i in indices:
        try:
            items.append(dataset.build_item(i))
            served.append(i)
        except DataError as error:
            if not dataset.skip_bad_samples:
                raise DataError(error.source, error.index, error.sample_id, f"{error.reason}; the pairs before it have "
                                "their lines: fix the file, or add --skip_bad_samples, and run again") from None
            logger.warning("%s; skipped (--skip_bad_samples): training skips it too", error)
            failed[dataset.kept[i]] = error.reason
    return served, items, failed


def pass_trainer(model, version, tokenizer, pass_args, output_dir: str) -> PreferenceTrainer:
    """The trainer whose answer_logps training uses, set up for inference on one device."""
    args = TrainingArguments(output_dir=output_dir, report_to="none",
                             use_cpu=pass_args.use_cpu, bf16=pass_args.bf16, method="dpo",
                             dataloader_num_workers=0)
    trainer = PreferenceTrainer(model=model, args=args, processing_class=tokenizer, version=version,
                                preference=PreferenceSettings())
    model.eval()
    return trainer


def main(argv=None):
    quiet_third_party()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = ArgumentParser((ModelArguments, DataArguments, PassArguments))
    try:
        model_args, data_args, pass_args = parser.parse_args_into_dataclasses(argv)
        computed = compute(model_args, data_args, pass_args)
    except KeyboardInterrupt:  # each finished batch's lines are on disk
        print("reference_logps: stopped by Ctrl-C; the pairs written so far are kept: run the same command again to "
              "compute the rest", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as error:
        if not is_reported_error(error):
            raise
        print(f"reference_logps: {error}", file=sys.stderr, flush=True)
        sys.exit(REPORTED_ERROR_EXIT)
    for target, count in computed.items():
        print(f"{target}: {count} pairs computed" + (" (it was complete)" if not count else ""))


if __name__ == "__main__":
    main()
