"""Ask a fine-tuned MiniCPM-V checkpoint (full, LoRA adapter, or merged) about images or a video.

    python chat.py --model output/minicpmv_full --image cat.jpg --question "What is this?"
    python chat.py --model output/minicpmv_lora [--base openbmb/MiniCPM-V-2_6] --image cat.jpg --interactive
    python chat.py --model output/minicpmv_full --video clip.mp4 --question "What happens?"   # 2.6+

Uses the checkpoint's own inference path (its chat() and chat template), so the answer is
what users of the checkpoint get. --interactive keeps a multi-turn conversation: one
question per line, an empty line or end of input stops.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from minicpmv_ft.images import open_rgb
from minicpmv_ft.loading import (AdapterBaseError, adapter_max_slice_nums, default_dtype, load_for_inference,
                                 version_for_inference)
from minicpmv_ft.quiet import quiet_third_party
from minicpmv_ft.versions import names_where
from minicpmv_ft.video import VideoError


def split_system(version, history) -> tuple[str | None, list]:
    """(system prompt, the other turns) of a history of (role, text): 2.6+ chat() takes the system
    turn as its system_prompt argument; a native model's template takes it as a message (None);
    2.0 and 2.5 chat() take none (ValueError)."""
    history = list(history)
    if not history or history[0][0] != "system":
        return None, history
    if not version.chat_takes_system_prompt:
        raise ValueError(f"MiniCPM-V {version.name}'s chat() takes no system turn (its roles are user and assistant)")
    if version.family.system_in_messages:
        return None, history
    return history[0][1], history[1:]


def chat_messages(version, images, question: str, history=()) -> list[dict]:
    """The msgs of one chat() call. chat() keeps no state, so the images go with the first user
    turn of every call, follow-up questions included (2.6+: inside its content; the older
    versions take the one image as chat()'s first argument)."""
    images = list(images)
    if len(images) > 1 and not version.chat_images_in_messages:
        raise ValueError(f"{version.checkpoints}: its chat() takes one image, got {len(images)}")
    msgs = [{"role": r, "content": c} for r, c in history] + [{"role": "user", "content": question}]
    if images and version.chat_images_in_messages:
        first = next(k for k, msg in enumerate(msgs) if msg["role"] == "user")
        msgs[first] = {"role": "user", "content": images + [msgs[first]["content"]]}
    return msgs


def video_frames(version, path: str):
    """(the video as the messages' media, chat() options) the way the checkpoint's own inference
    takes it: a remote-code checkpoint's frames as images with its video example's options
    (minicpmv_ft/remote_chat.py), a native one's video for its processor to sample
    (minicpmv_ft/native_chat.py)."""
    if version.video is None:
        raise ValueError(f"{version.checkpoints} takes no video")
    try:
        return version.family.video_input(version, path)
    except VideoError as exc:
        raise ValueError(f"{path}: {exc}") from None


def answer(model, tokenizer, version, images, question: str, history=(), max_new_tokens: int = 256,
           thinking: bool = False, max_slice_nums: int | None = None, extra: dict | None = None) -> str:
    """One answer to `question` after earlier (role, content) turns. `thinking` switches a
    thinking model (4.5) to reason before answering; `max_slice_nums` overrides the slicing the
    checkpoint was saved with; `extra`: more chat() options (a video's, from video_frames)."""
    system, history = split_system(version, history)
    msgs = chat_messages(version, images, question, history)
    image = None if version.chat_images_in_messages or not images else list(images)[0]
    # `tokenizer`: a native checkpoint's processor (load_for_inference)
    return version.family.answers(model, tokenizer, version, [msgs], image, system, max_new_tokens, thinking,
                                  max_slice_nums, extra)[0]


def answer_batch(model, tokenizer, version, requests, max_new_tokens: int = 256, thinking: bool = False,
                 max_slice_nums: int | None = None) -> list[str]:
    """Answers to [(images, question, history), ...]: in one chat() call where the checkpoint's
    chat() takes a list of conversations (2.6+: their batch inference), else one by one."""
    split = [split_system(version, history) for _, _, history in requests]
    systems = {system for system, _ in split}
    if not version.chat_images_in_messages or len(requests) == 1 or len(systems) > 1:
        # one by one: chat() takes one system prompt for a whole batch
        return [answer(model, tokenizer, version, *request, max_new_tokens, thinking, max_slice_nums)
                for request in requests]
    batch = [chat_messages(version, images, question, history)
             for (images, question, _), (_, history) in zip(requests, split)]
    return version.family.answers(model, tokenizer, version, batch, None, systems.pop(), max_new_tokens, thinking,
                                  max_slice_nums, None)


def converse(model, tokenizer, version, images, questions, out=None, max_new_tokens=256, thinking=False,
             max_slice_nums=None, extra=None):
    """Answers each question in turn, keeping the conversation; returns the (role, text) history."""
    out = out or sys.stdout
    history = []
    for question in questions:
        question = question.strip()
        if not question:
            break
        reply = answer(model, tokenizer, version, images, question, history, max_new_tokens, thinking, max_slice_nums,
                       extra)
        print(reply, file=out, flush=True)
        history += [("user", question), ("assistant", reply)]
    return history


def read_rgb(path: str):
    """The image of --image, or ValueError saying why it cannot be read."""
    if not os.path.isfile(path):
        raise ValueError(f"--image {path}: no such file")
    try:
        return open_rgb(path)
    except (OSError, ValueError) as exc:  # PIL: unidentified or truncated
        raise ValueError(f"--image {path}: cannot read it as an image ({exc})") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned checkpoint, merged model or LoRA adapter folder")
    parser.add_argument("--base", default=None, help="base model of a LoRA adapter (default: the one it records)")
    parser.add_argument("--image", action="append", default=[], help="image file; repeat for several")
    parser.add_argument("--video", default=None, help=f"a video file instead of images ({names_where(lambda v: v.video)})")
    parser.add_argument("--question", default=None, help="the question (without --interactive)")
    parser.add_argument("--interactive", action="store_true", help="read questions from standard input")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest answer, in tokens")
    parser.add_argument("--max_slice_nums", type=int, default=None,
                        help="most slices per image; default: what the model was trained (or saved) with")
    parser.add_argument("--thinking", action="store_true",
                        help=f"thinking models ({names_where(lambda v: v.chat.thinking)}): reason before answering "
                             "(default off, as their generation config)")
    parser.add_argument("--sampling", action="store_true",
                        help="sample the answer as the checkpoint's chat(sampling=True) does (the README's model.chat() "
                             "snippet); default: its deterministic decoding (beam search; native checkpoints: greedy)")
    args = parser.parse_args(argv)
    quiet_third_party()
    if not args.interactive and not args.question:
        parser.error("give --question, or --interactive")
    if args.video and args.image:
        parser.error("give --image or --video, not both")
    try:  # images and video are read before the weights load
        version = version_for_inference(args.model, args.base)
        images, extra = video_frames(version, args.video) if args.video else ([read_rgb(p) for p in args.image], None)
        tokenizer, model, version, _ = load_for_inference(args.model, args.base, default_dtype())
    except (AdapterBaseError, ValueError) as exc:
        parser.exit(2, f"chat.py: {exc}\n")
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    questions = iter(sys.stdin.readline, "") if args.interactive else [args.question]
    decoding, how = version.family.decoding(args.sampling)
    print(f"chat.py: decoding: {how}" + ("" if args.sampling else "; --sampling samples instead"), file=sys.stderr)
    try:
        converse(model, tokenizer, version, images, questions, max_new_tokens=args.max_new_tokens,
                 thinking=args.thinking, max_slice_nums=args.max_slice_nums or adapter_max_slice_nums(args.model),
                 extra={**(extra or {}), **decoding})
    except ValueError as exc:
        parser.exit(2, f"chat.py: {exc}\n")


if __name__ == "__main__":
    main()
