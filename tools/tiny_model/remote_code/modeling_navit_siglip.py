"""SigLIP vision tower with NaViT-style variable resolution (MiniCPM-V 2.5 / 2.6 interface):
pixel_values [B, 3, patch, L*patch] (patch-major, padded), patch_attention_mask [B, 1, L],
tgt_sizes [B, 2] = (H/patch, W/patch) giving each image's real grid for position ids."""
import torch
from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionEmbeddings, Idefics2VisionTransformer


class SiglipVisionEmbeddings(Idefics2VisionEmbeddings):
    def forward(self, pixel_values, patch_attention_mask, tgt_sizes=None):
        batch = pixel_values.size(0)
        embeddings = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        side = self.num_patches_per_side
        boundaries = torch.arange(1 / side, 1.0, 1 / side, device=pixel_values.device)
        position_ids = torch.zeros((batch, embeddings.shape[1]), dtype=torch.long, device=pixel_values.device)
        for b, mask in enumerate(patch_attention_mask):
            if tgt_sizes is not None:
                rows, cols = int(tgt_sizes[b][0]), int(tgt_sizes[b][1])
            else:
                rows, cols = int(mask[:, 0].sum()), int(mask[0].sum())
            frac_h = torch.arange(rows, device=pixel_values.device, dtype=torch.float32) / rows * (1 - 1e-6)
            frac_w = torch.arange(cols, device=pixel_values.device, dtype=torch.float32) / cols * (1 - 1e-6)
            bucket_h = torch.bucketize(frac_h, boundaries, right=True)
            bucket_w = torch.bucketize(frac_w, boundaries, right=True)
            position_ids[b, : rows * cols] = (bucket_h[:, None] * side + bucket_w).flatten()
        return embeddings + self.position_embedding(position_ids)


class SiglipVisionTransformer(Idefics2VisionTransformer):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = SiglipVisionEmbeddings(config)

    def forward(self, pixel_values, patch_attention_mask=None, tgt_sizes=None, **kwargs):
        batch = pixel_values.size(0)
        if patch_attention_mask is None:
            patch = self.config.patch_size
            patch_attention_mask = torch.ones(
                (batch, pixel_values.size(2) // patch, pixel_values.size(3) // patch),
                dtype=torch.bool, device=pixel_values.device)
        hidden = self.embeddings(pixel_values, patch_attention_mask, tgt_sizes)
        flat_mask = patch_attention_mask.reshape(batch, -1)
        attention_mask = None if bool(flat_mask.all()) else _prepare_4d_attention_mask(flat_mask, hidden.dtype)
        for layer in self.encoder.layers:
            hidden = layer(hidden, attention_mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return BaseModelOutput(last_hidden_state=self.post_layernorm(hidden))
