"""Inference of a native checkpoint (4.6, 4.7), which has no chat(): its processor renders the
conversation with its own chat template and makes the inputs, generate() answers greedily. A
video goes in as a `VideoClip`; its video processor picks the frames
(minicpmv_ft/processor_video.py), which PyAV decodes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from . import processor_video
from .video import VideoInfo, VideoScheme, decode_frames, read_video_info


@dataclass(frozen=True)
class VideoClip:
    """A video in a conversation: its file and container metadata."""
    path: str
    info: VideoInfo


def video_clip(path: str) -> VideoClip:
    """The clip of a video file (VideoError when its container cannot be read)."""
    return VideoClip(path, read_video_info(path))


def content_items(content) -> str | list[dict]:
    """chat()-style content (a string, or images, videos and strings in order) as chat-template items."""
    if isinstance(content, str):
        return content
    return [{"type": "image"} if isinstance(item, Image.Image) else {"type": "video"} if isinstance(item, VideoClip)
            else {"type": "text", "text": item} for item in content]


def media(conversations: list[list[dict]], kind) -> list:
    """The items of type `kind` in the conversations' content, in order."""
    return [item for msgs in conversations for m in msgs if not isinstance(m["content"], str)
            for item in m["content"] if isinstance(item, kind)]


def video_kwargs(processor, clips: list[VideoClip], scheme: VideoScheme) -> dict:
    """The processor's arguments for these videos: the frames its video processor picks, decoded,
    with the options training processes them with (minicpmv_ft/processor_video.py)."""
    plans = [processor_video.frame_plan(processor.video_processor, clip.info, scheme) for clip in clips]
    videos = [processor_video.as_video(decode_frames(clip.path, plan.indices)) for clip, plan in zip(clips, plans)]
    return {"videos": videos, "videos_kwargs": processor_video.processing_options([c.info for c in clips], scheme)}


def generate_answers(model, processor, conversations: list[list[dict]], max_new_tokens: int = 256,
                     thinking: bool = False, max_slice_nums: int | None = None,
                     video: VideoScheme | None = None, generate_options: dict | None = None) -> list[str]:
    """One answer per conversation ([{"role", "content"}], images and videos inside the content,
    as chat.chat_messages makes them), all in one left-padded generate() call; `video`: how the
    version samples videos (its registry entry); `generate_options`: generate()'s own (do_sample:
    family.decoding), greedy by default."""
    texts = [processor.apply_chat_template([{"role": m["role"], "content": content_items(m["content"])} for m in msgs],
                                           tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
             for msgs in conversations]
    images, clips = media(conversations, Image.Image), media(conversations, VideoClip)
    options = {} if max_slice_nums is None else {"images_kwargs": {"max_slice_nums": int(max_slice_nums)}}
    if clips:
        options.update(video_kwargs(processor, clips, video))
    inputs = processor(text=texts, images=images or None, return_tensors="pt", padding=True, **options).to(model.device)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                   **{"do_sample": False, **(generate_options or {})})
    return [text.strip() for text in processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:],
                                                            skip_special_tokens=True)]
