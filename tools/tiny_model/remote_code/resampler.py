"""Perceiver-style resampler of the tiny MiniCPM-V models: query_num learned queries attend
to the vision tokens plus a 2-D sin-cos position embedding sized by each image's tgt_size."""
import numpy as np
import torch
from torch import nn


def sincos_1d(embed_dim, positions):
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(embed_dim, size):
    """[H, W, embed_dim] position embedding for a grid of H x W patches."""
    height, width = size
    grid_w, grid_h = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    emb = np.concatenate([sincos_1d(embed_dim // 2, grid_h), sincos_1d(embed_dim // 2, grid_w)], axis=1)
    return emb.reshape(height, width, embed_dim)


class Resampler(nn.Module):
    def __init__(self, num_queries, embed_dim, num_heads, kv_dim=None, max_size=(70, 70)):
        super().__init__()
        self.num_queries, self.embed_dim, self.max_size = num_queries, embed_dim, list(max_size)
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim and kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Parameter((embed_dim ** -0.5) * torch.randn(embed_dim, embed_dim))
        self._set_2d_pos_cache(self.max_size)

    def _set_2d_pos_cache(self, max_size, device="cpu"):
        pos = torch.from_numpy(sincos_2d(self.embed_dim, max_size)).float().to(device)
        self.register_buffer("pos_embed", pos, persistent=False)

    def forward(self, x, tgt_sizes):
        """x [B, N, kv_dim] vision tokens; tgt_sizes int [B, 2] (or one (h, w)). -> [B, query_num, D]."""
        if not torch.is_tensor(tgt_sizes):
            tgt_sizes = torch.tensor([tgt_sizes], dtype=torch.int32)
        tgt_sizes = tgt_sizes.reshape(-1, 2)
        assert x.shape[0] == tgt_sizes.shape[0]
        batch, device, dtype = x.shape[0], x.device, x.dtype
        if int(tgt_sizes[:, 0].max()) > self.max_size[0] or int(tgt_sizes[:, 1].max()) > self.max_size[1]:
            self.max_size = [max(int(tgt_sizes[:, 0].max()), self.max_size[0]), max(int(tgt_sizes[:, 1].max()), self.max_size[1])]
            self._set_2d_pos_cache(self.max_size, device)
        patch_len = tgt_sizes[:, 0] * tgt_sizes[:, 1]
        key_padding_mask = torch.zeros((batch, x.shape[1]), dtype=torch.bool, device=device)
        pos_embed = []
        for i in range(batch):
            h, w = int(tgt_sizes[i][0]), int(tgt_sizes[i][1])
            pos_embed.append(self.pos_embed[:h, :w, :].reshape(h * w, -1).to(device=device, dtype=dtype))
            key_padding_mask[i, int(patch_len[i]):] = True
        pos_embed = nn.utils.rnn.pad_sequence(pos_embed, batch_first=True)
        if pos_embed.shape[1] < x.shape[1]:
            pos_embed = nn.functional.pad(pos_embed, (0, 0, 0, x.shape[1] - pos_embed.shape[1]))
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, batch, 1)
        out = self.attn(q, x + pos_embed.permute(1, 0, 2), x, key_padding_mask=key_padding_mask)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj
