"""Tiny MiniCPM-V: the interface of the real checkpoints' modeling_minicpmv.py, small weights.

Which version a directory behaves as follows from its configuration_minicpm.py, as in the
real checkpoints: the config class's LLM base picks the LLM (MiniCPM for 2.0, Llama for
2.5 and 4.0, Qwen2 for 2.6, Qwen3 for 4.5); a `vision_encoder` field means 2.0's timm ViT
taking [3, H, W] images, a `vision_config` the NaViT SigLIP taking patch-major pixels and
`tgt_sizes`; a `use_image_id` field (2.6+) the per-slice placeholders with image ids.
"""
import math

import timm
import torch
from torch import nn
from transformers import AutoProcessor, LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM
from transformers import Qwen3Config, Qwen3ForCausalLM

from .configuration_minicpm import MiniCPMVConfig
from .image_processing_minicpmv import MiniCPMVImageSlicer
from .modeling_minicpm import MiniCPMForCausalLM
from .modeling_navit_siglip import SiglipVisionTransformer
from .resampler import Resampler
from .typing_names import List  # NameError on import for 2.5 / 2.6, as their published resampler.py

IMAGE_TAG = "(<image>./</image>)"  # where an image goes in the prompt, before its placeholder is known


class MiniCPMVPreTrainedModel(PreTrainedModel):
    config_class = MiniCPMVConfig
    base_model_prefix = "llm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "MiniCPMDecoderLayer",
                         "Idefics2EncoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()


class MiniCPMV(MiniCPMVPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.uses_timm = hasattr(config, "vision_encoder")
        if isinstance(config, LlamaConfig):
            self.llm = LlamaForCausalLM(config)
        elif isinstance(config, Qwen2Config):
            self.llm = Qwen2ForCausalLM(config)
        elif isinstance(config, Qwen3Config):
            self.llm = Qwen3ForCausalLM(config)
        else:
            self.llm = MiniCPMForCausalLM(config)
        self.vpm = self.init_vision_module()
        self.vision_dim = self.vpm.embed_dim if self.uses_timm else config.vision_config.hidden_size
        self.embed_dim = self.llm.config.hidden_size
        self.resampler = Resampler(config.query_num, self.embed_dim, max(1, self.embed_dim // 128), self.vision_dim)
        self.processor = None  # 2.6+: loaded by the first chat() that is given none
        # Like the real classes, no post_init() here.

    def init_vision_module(self):
        if self.uses_timm:
            common = {"num_classes": 0, "dynamic_img_size": True, "dynamic_img_pad": True}
            kwargs = self.config.vision_encoder_kwargs
            if kwargs:
                model = timm.models.VisionTransformer(**kwargs, **common)
            else:
                model = timm.create_model(self.config.vision_encoder, pretrained=False, **common)
            if getattr(model, "attn_pool", None) is not None:
                model.attn_pool = nn.Identity()
            if self.config.drop_vision_last_layer:
                model.blocks = model.blocks[:-1]
            return model
        vision_config = self.config.vision_config
        vision_config._attn_implementation = "eager"
        model = SiglipVisionTransformer(vision_config)
        if self.config.drop_vision_last_layer:
            model.encoder.layers = model.encoder.layers[:-1]
        return model

    def get_input_embeddings(self):
        if self.uses_timm:
            # The real 2.0 class does not provide it either (PEFT users must work around it).
            raise NotImplementedError("MiniCPM-V 2.0 does not implement get_input_embeddings")
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.llm.lm_head

    def set_output_embeddings(self, value):
        self.llm.lm_head = value

    def _dummy_vision(self, device, dtype):
        """Features of a blank 224x224 image, so the vision tower runs for text-only batches."""
        side = 224 // self.config.patch_size if hasattr(self.config, "patch_size") else 16
        if self.uses_timm:
            return self.get_vision_embedding([torch.zeros((3, 224, 224), device=device, dtype=dtype)])
        features = self.vpm(torch.zeros((1, 3, 224, 224), device=device, dtype=dtype)).last_hidden_state
        return self.resampler(features, torch.tensor([[side, side]], dtype=torch.int32))

    def get_vision_embedding(self, images: List[torch.Tensor]):
        out = []
        dtype = self.vpm.pos_embed.data.dtype
        for image in images:
            h, w = image.shape[-2:]
            patch = self.vpm.patch_embed.patch_size[0]
            features = self.vpm.forward_features(image.unsqueeze(0).type(dtype))
            if getattr(self.vpm, "num_prefix_tokens", 0) > 0:
                features = features[:, self.vpm.num_prefix_tokens:]
            out.append(self.resampler(features, (math.ceil(h / patch), math.ceil(w / patch))))
        return torch.vstack(out)

    def _navit_embedding(self, pixel_values_list, tgt_sizes, dtype, device, temporal_ids=None):
        all_pixels = [p.flatten(end_dim=1).permute(1, 0) for sample in pixel_values_list for p in sample]
        # As the real 2.5 code: every sample's tgt_sizes is stacked, so a text-only sample must
        # bring an empty [0, 2] tensor (an empty list crashes here).
        tgt_sizes = torch.vstack(tgt_sizes).type(torch.int32)
        max_patches = int(torch.max(tgt_sizes[:, 0] * tgt_sizes[:, 1]))
        pixels = nn.utils.rnn.pad_sequence(all_pixels, batch_first=True, padding_value=0.0)
        batch, length, _ = pixels.shape
        pixels = pixels.permute(0, 2, 1).reshape(batch, 3, -1, length)
        mask = torch.zeros((batch, 1, max_patches), dtype=torch.bool, device=device)
        for i in range(batch):
            mask[i, 0, : int(tgt_sizes[i][0] * tgt_sizes[i][1])] = True
        features = self.vpm(pixels.type(dtype), patch_attention_mask=mask, tgt_sizes=tgt_sizes).last_hidden_state
        # as the real 4.5 code: the groups of every sample in one list (one output per group)
        groups = None if temporal_ids is None else [group for sample in temporal_ids for group in sample]
        return self.resampler(features, tgt_sizes, groups)

    def _check_temporal_ids(self, temporal_ids, counts):
        """4.5's 3-D resampler reads data["temporal_ids"]: per sample, groups of frame times whose
        lengths add up to the sample's views ([-1] for each view of a still image)."""
        if temporal_ids is None:
            return
        if not getattr(self.config, "batch_3d_resampler", False):
            raise TypeError("temporal_ids given to a model without a 3-D resampler")
        for groups, count in zip(temporal_ids, counts):
            if sum(len(group) for group in groups) != count:
                raise ValueError(f"temporal_ids {groups} cover {sum(len(g) for g in groups)} views; the sample has {count}")

    def get_vllm_embedding(self, data):
        """(inputs_embeds [B, L, H], per-sample vision features) with image features scattered
        into the positions of data["image_bound"]."""
        embed = self.llm.get_input_embeddings()
        dtype, device = embed.weight.dtype, embed.weight.device
        if "vision_hidden_states" in data:
            vision_hidden_states = data["vision_hidden_states"]
        else:
            pixel_values_list = data["pixel_values"]
            counts = [len(sample) for sample in pixel_values_list]
            self._check_temporal_ids(data.get("temporal_ids"), counts)
            if sum(counts) == 0:
                dummy = self._dummy_vision(device, dtype) if self.training else []
                vision_hidden_states = [dummy for _ in pixel_values_list]
            else:
                if self.uses_timm:
                    features = self.get_vision_embedding([p for sample in pixel_values_list for p in sample])
                else:
                    features = self._navit_embedding(pixel_values_list, data["tgt_sizes"], dtype, device,
                                                     data.get("temporal_ids"))
                # Split between samples by VIEW count, as the real 4.5 code does even when the
                # resampler returned one output per group (so with grouped frames a later sample
                # gets the wrong features, or none).
                vision_hidden_states, start = [], 0
                for count in counts:
                    vision_hidden_states.append(features[start:start + count] if count else [])
                    start += count
        vllm_embedding = embed(data["input_ids"])
        if hasattr(self.llm.config, "scale_emb"):
            vllm_embedding = vllm_embedding * self.llm.config.scale_emb
        vision_hidden_states = [v.type(vllm_embedding.dtype) if torch.is_tensor(v) else v for v in vision_hidden_states]
        for i in range(len(data["input_ids"])):
            features = vision_hidden_states[i]
            if len(features) == 0:
                continue
            bound = data["image_bound"][i]
            if len(bound) > 0:
                indices = torch.stack([torch.arange(int(s), int(e), dtype=torch.long) for s, e in bound]).to(device)
                vllm_embedding[i] = vllm_embedding[i].scatter(
                    0, indices.view(-1, 1).repeat(1, vllm_embedding.shape[-1]),
                    features.reshape(-1, features.shape[-1]))
            elif self.training:
                vllm_embedding[i] = vllm_embedding[i] + features[0].mean() * 0
        return vllm_embedding, vision_hidden_states

    def forward(self, data, **kwargs):
        vllm_embedding, _ = self.get_vllm_embedding(data)
        position_ids = data["position_ids"]
        if position_ids.dtype != torch.int64:
            position_ids = position_ids.long()
        return self.llm(input_ids=None, position_ids=position_ids, inputs_embeds=vllm_embedding, **kwargs)

    # ---- inference -------------------------------------------------------------------------
    # As the real remote code: 2.0 and 2.5 slice with config.json's settings; 2.6+ with their
    # processor's (preprocessor_config.json, loaded from config._name_or_path unless chat() is
    # given one), after asserting that the two files agree. Answers come from self.llm.generate:
    # 2.0's MiniCPM LLM has none on transformers >= 4.50, so its chat() fails as the real one does.

    def _config_slicer(self):
        cfg = self.config
        slicing = cfg if self.uses_timm else cfg.slice_config
        return MiniCPMVImageSlicer(cfg.query_num, cfg.patch_size, slicing.max_slice_nums,
                                   getattr(slicing, "scale_resolution", 448))

    def _slicer(self, max_slice_nums=None, use_image_id=None, processor=None):
        """The slicer of a chat() call: 2.6+ their (checked) processor's, whose settings the call's
        arguments override; 2.0 / 2.5 config.json's (their chat() takes no such arguments)."""
        if not hasattr(self.config, "use_image_id"):
            return self._config_slicer()
        return self._checked_processor(processor).image_processor.slicer(max_slice_nums, use_image_id)

    def _checked_processor(self, processor):
        """The processor of a 2.6+ chat() call, checked against config.json as the real one is."""
        if processor is None:
            if self.processor is None:
                self.processor = AutoProcessor.from_pretrained(self.config._name_or_path, trust_remote_code=True)
            processor = self.processor
        images = processor.image_processor
        message = "These two values should be the same. Check `config.json` and `preprocessor_config.json`."
        assert self.config.query_num == images.image_feature_size, message
        assert self.config.patch_size == images.patch_size, message
        assert self.config.use_image_id == images.use_image_id, message
        assert self.config.slice_config.max_slice_nums == images.max_slice_nums, message
        assert self.config.slice_mode == images.slice_mode, message
        return processor

    def _prompt_text(self, msgs, tokenizer, system_prompt, enable_thinking):
        """The prompt string, encoded in one call as the real processors do (2.0, 4.0: <s> first)."""
        if self.uses_timm:
            names = {"user": "<用户>", "assistant": "<AI>"}
            return "".join(names[m["role"]] + m["content"] for m in msgs) + "<AI>"
        if system_prompt:
            msgs = [{"role": "system", "content": system_prompt}] + msgs
        options = {"enable_thinking": enable_thinking} if getattr(self.config, "batch_3d_resampler", False) else {}
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **options)

    def _inputs(self, image, msgs, tokenizer, slicer, system_prompt="", enable_thinking=False, temporal_ids=None):
        """The data dict of one conversation, built as the real chat() and processor build it."""
        images, prompt_msgs = [], []
        for m, msg in enumerate(msgs):
            role = msg["role"]
            assert role in ["user", "assistant"]
            if m == 0:
                assert role == "user", "The role of first msg should be user"
            content = msg["content"] if isinstance(msg["content"], list) else [msg["content"]]
            if m == 0 and image is not None:
                content = [image] + content
            parts = []
            for item in content:
                if isinstance(item, str):
                    parts.append(item)
                    continue
                images.append(item.convert("RGB"))
                parts.append(IMAGE_TAG)
            prompt_msgs.append({"role": role, "content": "\n".join(parts)})
        # As the real processors: each tag becomes its image's placeholder; with 4.5's temporal_ids
        # an image (frame) that is not the first of its group gets none, and the text before it
        # is stripped.
        skipped = set()
        if temporal_ids is not None:
            index = 0
            for group in temporal_ids:
                skipped.update(range(index + 1, index + len(group)))
                index += len(group)
        chunks = self._prompt_text(prompt_msgs, tokenizer, system_prompt, enable_thinking).split(IMAGE_TAG)
        text, views = "", []
        for k, picture in enumerate(images):
            picture_views, grid = slicer.slices(picture)
            views.extend(picture_views)
            text += chunks[k].strip() if k in skipped else chunks[k] + slicer.placeholder(tokenizer, grid, k)
        text += chunks[-1]
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        openers = [tokenizer.im_start_id] + ([tokenizer.slice_start_id] if slicer.per_slice else [])
        closers = [tokenizer.im_end_id] + ([tokenizer.slice_end_id] if slicer.per_slice else [])
        starts = torch.where(torch.isin(ids, torch.tensor(openers)))[0] + 1
        ends = torch.where(torch.isin(ids, torch.tensor(closers)))[0]
        tensors = [slicer.to_tensor(view, not self.uses_timm) for view in views]
        data = {
            "input_ids": ids.unsqueeze(0).to(self.device),
            "position_ids": torch.arange(len(ids)).unsqueeze(0).to(self.device),
            "pixel_values": [[t.to(self.device) for t, _ in tensors]],
            "tgt_sizes": [torch.tensor([tgt for _, tgt in tensors], dtype=torch.int32).reshape(-1, 2)],
            "image_bound": [torch.stack([starts, ends], dim=1)],
        }
        if temporal_ids is not None:
            data["temporal_ids"] = [list(temporal_ids)]
        return data

    def _terminators(self, tokenizer):
        return [tokenizer.eos_token_id] + [tokenizer.convert_tokens_to_ids(t) for t in
                                           ("<|eot_id|>", "<|im_end|>", "<|endoftext|>", "</s>")
                                           if t in tokenizer.get_vocab()]

    @torch.inference_mode()
    def _generate(self, data, tokenizer, max_new_tokens, sampling, **kwargs):
        """Decoding as the real chat(): self.llm.generate on the prompt's embeddings, sampling
        (top_p 0.8, top_k 100, temperature 0.7, repetition_penalty 1.05) or 3 beams with
        repetition_penalty 1.2; the answer's ids without padding (id 0) and terminators."""
        embeds, _ = self.get_vllm_embedding(data)
        if sampling:
            options = {"top_p": 0.8, "top_k": 100, "temperature": 0.7, "do_sample": True, "repetition_penalty": 1.05}
        else:
            options = {"num_beams": 3, "repetition_penalty": 1.2}
        options.update((k, kwargs[k]) for k in options.keys() & kwargs.keys())
        terminators = self._terminators(tokenizer)
        output = self.llm.generate(inputs_embeds=embeds, pad_token_id=0, eos_token_id=terminators,
                                   max_new_tokens=max_new_tokens, **options)
        answer = output[0][output[0] != 0]
        while len(answer) and int(answer[-1]) in terminators:
            answer = answer[:-1]
        return tokenizer.decode(answer, skip_special_tokens=True).strip()

    def chat(self, image, msgs, *args, **kwargs):
        """2.5+: chat(image, msgs, tokenizer, processor=None, ...) -> answer (4.5: enable_thinking,
        default False); msgs a list of conversations -> a list of answers (the real 2.6+ batch
        inference). 2.0: chat(image, msgs, context, tokenizer, ...) -> (answer, context, config)."""
        if self.uses_timm:
            context, tokenizer = (list(args) + [None, None])[:2]
            tokenizer = tokenizer or kwargs.pop("tokenizer")
            kwargs.pop("context", None)
        else:
            tokenizer = args[0] if args else kwargs.pop("tokenizer")
        per_slice = hasattr(self.config, "use_image_id")
        processor = args[1] if len(args) > 1 else kwargs.pop("processor", None)
        slicer = self._slicer(kwargs.get("max_slice_nums"), kwargs.get("use_image_id"), processor)
        # 2.0 and 2.5 chat() take no system_prompt (it lands, unread, in their **kwargs)
        names = ("system_prompt", "enable_thinking", "temporal_ids") if per_slice else ()
        prompt = {k: kwargs[k] for k in names if k in kwargs}
        decoding = {k: v for k, v in kwargs.items()
                    if k not in ("system_prompt", "enable_thinking", "temporal_ids", "max_slice_nums", "use_image_id")}
        decoding.setdefault("max_new_tokens", 1024 if self.uses_timm else 2048)
        decoding.setdefault("sampling", True)
        if per_slice and msgs and isinstance(msgs[0], list):  # batch: a list of conversations
            return [self._generate(self._inputs(image, m, tokenizer, slicer, **prompt), tokenizer, **decoding)
                    for m in msgs]
        answer = self._generate(self._inputs(image, msgs, tokenizer, slicer, **prompt), tokenizer, **decoding)
        if self.uses_timm:
            return answer, list(msgs) + [{"role": "assistant", "content": answer}], {}
        return answer
