"""The two kinds of checkpoint generation, one object each, which the code that encodes samples,
batches them, feeds the model, loads it for inference and asks it calls instead of comparing a
version's fields:

- REMOTE_CODE (2.0-4.5): the checkpoint's own modeling files (trust_remote_code); our
  SampleEncoder reproduces its slicing and placeholders; forward(data=batch); its chat().
- NATIVE (4.6 and later): classes inside transformers, in their own environment; the
  checkpoint's processor writes placeholders and pixels; forward(**batch); its processor's chat
  template and generate().

The implementations live outside this package (they import the registry), hence the imports
inside the methods.
"""
from __future__ import annotations


class Family:
    name = ""
    # The placeholder schemes of its entries (ModelVersion.placeholder_scheme, checked when an
    # entry is made).
    placeholder_schemes: tuple[str, ...] = ()
    # Its processor's chat template takes a system turn as a message (not as an argument).
    system_in_messages = False

    def check_entry(self, version):
        """ValueError when a registry entry of this family contradicts it."""
        if version.placeholder_scheme not in self.placeholder_schemes:
            raise ValueError(f"MiniCPM-V {version.name}: placeholder_scheme {version.placeholder_scheme!r} is none of "
                             f"{self.placeholder_schemes} (a {self.name} entry)")

    def make_encoder(self, tokenizer, config, version, max_slice_nums, model_max_length, keep_earlier_reasoning,
                     image_cache_dir):
        """The SampleEncoder of `version`'s samples."""
        raise NotImplementedError

    @property
    def media(self):
        """Where a batch takes its items' pixels (minicpmv_ft/batching.py)."""
        raise NotImplementedError

    def placeholder_tokens(self, tokenizer, version) -> list:
        """The tokens an image's placeholder is made of, besides <image> and </image>, which the
        checkpoint's tokenizer must carry."""
        raise NotImplementedError

    def forward_kwargs(self, batch: dict, model) -> dict:
        """The keyword arguments of `model`(...) for a collated batch (labels taken out), but its
        attention_mask, which the caller passes (None for a packed batch)."""
        raise NotImplementedError

    def vision_once_per_pair(self, model, version, pairs: int):
        """The block within which `model`'s forward on a batch of `pairs` preference pairs (chosen
        rows, then the same pairs' rejected rows) runs each pair's images through the vision tower
        once (minicpmv_ft/pair_vision.py)."""
        raise NotImplementedError

    def inference_inputs(self, tokenizer, path: str):
        """What inference encodes with: the tokenizer, or the checkpoint's processor at `path`."""
        return tokenizer

    def answers(self, model, tokenizer, version, conversations: list[list[dict]], image, system: str | None,
                max_new_tokens: int, thinking: bool, max_slice_nums: int | None, extra: dict | None) -> list[str]:
        """One answer per conversation (chat()-style messages, minicpmv_ft/remote_chat.py);
        `image`: the one image of a checkpoint whose chat() takes it apart from the messages."""
        raise NotImplementedError

    def video_input(self, version, path: str) -> tuple[list, dict | None]:
        """(what goes into a message's content for the video at `path`, more answers() options)
        as the checkpoint's inference takes a video; VideoError when it cannot be read."""
        raise NotImplementedError

    def decoding(self, sampling: bool) -> tuple[dict, str]:
        """(answers() options, how the answer is decoded, in words): the checkpoint's deterministic
        decoding, or sampling as its own inference samples."""
        raise NotImplementedError

    def __repr__(self):
        return self.name


class RemoteCode(Family):
    name = "remote code"
    placeholder_schemes = ("wrapped", "per_slice")

    def check_entry(self, version):
        super().check_entry(version)
        if version.model_type != "minicpmv" or version.auto_class != "AutoModel":
            raise ValueError(f"MiniCPM-V {version.name}: a remote-code checkpoint's config.json says model_type "
                             f"'minicpmv' and loads with AutoModel, not {version.model_type!r} / {version.auto_class!r}")

    def make_encoder(self, tokenizer, config, version, max_slice_nums, model_max_length, keep_earlier_reasoning,
                     image_cache_dir):
        from ..encoding import SampleEncoder
        from . import image_settings

        return SampleEncoder(tokenizer, version, image_settings(config, version, max_slice_nums), model_max_length,
                             keep_earlier_reasoning, image_cache_dir)

    @property
    def media(self):
        from ..batching import REMOTE_MEDIA

        return REMOTE_MEDIA

    def placeholder_tokens(self, tokenizer, version):
        # the remote code's query tokens are <unk>; 2.6+ wrap each slice's
        return [tokenizer.unk_token] + ["<slice>", "</slice>"] * (version.placeholder_scheme == "per_slice")

    def forward_kwargs(self, batch, model):
        return {"data": batch}

    def vision_once_per_pair(self, model, version, pairs):
        from ..pair_vision import remote_code_vision_once
        from .spec import submodule

        return remote_code_vision_once(submodule(model, ""), pairs)

    def answers(self, model, tokenizer, version, conversations, image, system, max_new_tokens, thinking,
                max_slice_nums, extra):
        from ..remote_chat import chat_answers

        return chat_answers(model, tokenizer, version, conversations, image, system, max_new_tokens, thinking,
                            max_slice_nums, extra)

    def video_input(self, version, path):
        from ..remote_chat import video_frames

        return video_frames(version, path)

    def decoding(self, sampling):
        return {"sampling": sampling}, ("sampling, as chat(sampling=True) samples" if sampling else
                                        "beam search, as chat(sampling=False) decodes (deterministic)")


class Native(Family):
    name = "native"
    placeholder_schemes = ("processor",)
    system_in_messages = True

    def check_entry(self, version):
        super().check_entry(version)
        from .environments import BY_MODEL_TYPE

        if version.model_type not in BY_MODEL_TYPE:
            raise ValueError(f"MiniCPM-V {version.name}: model_type {version.model_type!r} has no environment in "
                             "minicpmv_ft/versions/environments.py (a native entry needs the transformers its "
                             "classes ship in)")

    def make_encoder(self, tokenizer, config, version, max_slice_nums, model_max_length, keep_earlier_reasoning,
                     image_cache_dir):
        if image_cache_dir:
            raise ValueError(f"--image_cache_dir: MiniCPM-V {version.name}'s processor makes its pixels itself; "
                             "train without the image cache")
        from transformers import AutoProcessor

        from ..processor_encoding import ProcessorSampleEncoder

        processor = AutoProcessor.from_pretrained(tokenizer.name_or_path)
        return ProcessorSampleEncoder(tokenizer, version, processor, max_slice_nums, model_max_length,
                                      keep_earlier_reasoning)

    @property
    def media(self):
        from ..batching import PROCESSOR_MEDIA

        return PROCESSOR_MEDIA

    def placeholder_tokens(self, tokenizer, version):
        return [getattr(tokenizer, "image_token", None), "<slice>", "</slice>"]  # its processor's image token

    def forward_kwargs(self, batch, model):
        kwargs = {key: value for key, value in batch.items() if key != "attention_mask"}
        if "mm_token_type_ids" in batch and "attention_mask" not in batch:
            # a packed row of a model that lays out its own positions: each sample's, as alone
            from ..canvas_positions import packed_positions
            from .spec import submodule

            kwargs["position_ids"] = packed_positions(submodule(model, "model"), batch)
        return kwargs

    def vision_once_per_pair(self, model, version, pairs):
        from ..pair_vision import native_vision_once
        from .spec import submodule

        # the module holding the vision tower: its forward calls its own get_image_features
        return native_vision_once(submodule(model, version.vision_module.rpartition(".")[0]), pairs)

    def inference_inputs(self, tokenizer, path):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    def answers(self, model, tokenizer, version, conversations, image, system, max_new_tokens, thinking,
                max_slice_nums, extra):
        from ..native_chat import generate_answers

        return generate_answers(model, tokenizer, conversations, max_new_tokens, thinking, max_slice_nums,
                                version.video, extra)

    def video_input(self, version, path):
        from ..native_chat import video_clip

        return [video_clip(path)], None

    def decoding(self, sampling):
        return {"do_sample": sampling}, ("sampling with the checkpoint's generation_config" if sampling else
                                         "greedy (deterministic)")


REMOTE_CODE = RemoteCode()
NATIVE = Native()
