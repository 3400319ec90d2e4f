"""A native checkpoint's videos (4.6, 4.7), through its own video processor:

    plan = frame_plan(video_processor, info, scheme)    # its sample_frames on the container's metadata
    inputs = planned_inputs(video_processor, info, plan, scheme)  # no decoding: what its planning gives
    text = placeholder(processor, inputs, k)            # its replace_video_token (and id, where it adds one)
    pixels = processed(video_processor, frames, info, scheme)    # its pixels of exactly those frames

The processor's own path loader decodes the whole file with torchcodec (which needs a system
FFmpeg); here PyAV decodes only the frames its `sample_frames` picks, from the metadata it would
read (frame count, average rate, duration = count / rate), and the frames go to the processor
with `do_sample_frames=False`. Every frame is one unit (no sub-second stacking: see
`check_no_stacking`): its source view and slices as an image's, with the video token.
"""
from __future__ import annotations

import numpy as np

from .slicing import SlicePlan
from .video import FramePlan, VideoInfo, VideoScheme


def metadata(info: VideoInfo):
    """The VideoMetadata its processor reads for a video with this container metadata."""
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(total_num_frames=info.frames, fps=info.fps, duration=info.duration, width=info.size[0],
                         height=info.size[1])


def check_no_stacking(video_processor):
    """ValueError for a video processor that stacks sub-second frames into composite images
    (stack_frames > 1): those units' sizes follow its canvas layout, which the placeholders
    planned from the container alone would not know."""
    if int(video_processor.stack_frames or 1) > 1:
        raise ValueError(f"the checkpoint's video processor stacks {video_processor.stack_frames} frames a second into "
                         "composite images (stack_frames in video_preprocessor_config.json); training on such videos "
                         "is not supported yet: set stack_frames to 1 there")


def frame_plan(video_processor, info: VideoInfo, scheme: VideoScheme) -> FramePlan:
    """The frames its `sample_frames` picks (scheme.max_frames None: its max_num_frames), each its
    own unit."""
    check_no_stacking(video_processor)
    indices = [int(i) for i in video_processor.sample_frames(metadata(info), max_num_frames=scheme.max_frames)]
    return FramePlan(indices, [[-1] for _ in indices])


def plan_views(part, size, max_slice_nums: int, slice_mode: bool) -> SlicePlan:
    """The views of a picture of (W, H) `size` as an image or video processor (`part`) cuts it,
    from its own planning methods: the source resized, and slices where it slices."""
    height_width = (size[1], size[0])
    grid = part.get_sliced_grid(height_width, max_slice_nums, part.scale_resolution) if slice_mode else None
    source_h, source_w = part.find_best_resize(height_width, part.scale_resolution, part.patch_size,
                                               downsample_mode=part.downsample_mode, allow_upscale=grid is None)
    if grid is None:
        return SlicePlan((source_w, source_h), None, None)
    rows, cols = grid
    refine_h, refine_w = part.get_refine_size(height_width, grid, part.scale_resolution, part.patch_size,
                                              downsample_mode=part.downsample_mode, allow_upscale=True)
    return SlicePlan((source_w, source_h), (cols, rows), (refine_w // cols, refine_h // rows))


def target_sizes(plan: SlicePlan, patch: int) -> list[list[int]]:
    """(height, width) in patches of each view, source first (a processor's target sizes)."""
    sizes = [[plan.source_size[1] // patch, plan.source_size[0] // patch]]
    if plan.grid is not None:
        sizes += [[plan.cell_size[1] // patch, plan.cell_size[0] // patch]] * plan.num_slices
    return sizes


def frame_views(video_processor, info: VideoInfo, scheme: VideoScheme) -> SlicePlan:
    """The views of one frame (every frame of a video has its size)."""
    slices = video_processor.max_slice_nums if scheme.max_slice_nums is None else scheme.max_slice_nums
    return plan_views(video_processor, info.size, int(slices), bool(video_processor.slice_mode))


def planned_inputs(video_processor, info: VideoInfo, plan: FramePlan, scheme: VideoScheme) -> dict:
    """What its processing returns about the views of the planned frames (target sizes per view,
    grid per frame, frame count), without decoding: what its replace_video_token reads."""
    views = frame_views(video_processor, info, scheme)
    cols, rows = views.grid or (0, 0)
    count = len(plan.indices)
    return {"target_sizes_videos": np.array(target_sizes(views, video_processor.patch_size) * count),
            "grids_videos": np.array([[rows, cols]] * count), "num_frames_per_video": [count]}


def placeholder(processor, inputs: dict, video_index: int) -> str:
    """The text its processor puts for the video with these processed `inputs`, the
    `video_index`-th of its sample: replace_video_token, and the id prefix where its processor adds
    one to videos (4.6 does, counting the sample's videos; 4.7 does not)."""
    text = processor.replace_video_token(inputs, video_idx=0, video_token_divisor=processor.video_token_divisor)
    if not processor.default_use_image_id:
        return text
    token = processor.video_token
    return processor._prepend_local_ids([token * (video_index + 1)], [""] * video_index + [text], token)[video_index]


def processing_options(infos: list[VideoInfo], scheme: VideoScheme) -> dict:
    """Its video processor's arguments for the planned frames of these videos: their metadata,
    no sampling of its own on them, the scheme's slices per frame."""
    options = {"video_metadata": [metadata(info) for info in infos], "do_sample_frames": False}
    if scheme.max_slice_nums is not None:
        options["max_slice_nums"] = int(scheme.max_slice_nums)
    return options


def as_video(frames: list) -> np.ndarray:
    """Decoded frames (PIL images) as the [T, H, W, 3] uint8 array a video processor takes."""
    return np.stack([np.asarray(frame) for frame in frames])


def processed(video_processor, frames: list, info: VideoInfo, scheme: VideoScheme) -> dict:
    """Its pixel_values_videos [1, 3, patch, N] and target_sizes_videos [views, 2] (and the grids
    and frame count) for exactly these decoded frames (PIL images, the planned ones in order)."""
    return video_processor(videos=[as_video(frames)], return_tensors="pt", **processing_options([info], scheme))
