"""Perceiver-style resampler of the tiny MiniCPM-V models: query_num learned queries attend
to the vision tokens plus a 2-D sin-cos position embedding sized by each image's tgt_size.

With `temporal_ids` (4.5's 3-D resampler: a list of groups of frame times, [-1] for a still
view) each view's keys also get a 1-D sin-cos embedding of its time (zero for -1), and the
queries attend to all views of a group at once: one output per GROUP, not per view."""
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

    def forward(self, x, tgt_sizes, temporal_ids=None):
        """x [B, N, kv_dim] vision tokens; tgt_sizes int [B, 2] (or one (h, w)); temporal_ids None or
        groups whose lengths sum to B. -> [B or number of groups, query_num, D]."""
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
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # N x B x D
        keys = x + pos_embed.permute(1, 0, 2)
        q = self.ln_q(self.query)
        if temporal_ids is None:
            out = self.attn(q.unsqueeze(1).repeat(1, batch, 1), keys, x, key_padding_mask=key_padding_mask)[0]
            return self.ln_post(out.permute(1, 0, 2)) @ self.proj
        times = np.array([t for group in temporal_ids for t in group], dtype=np.float64)
        assert len(times) == batch, f"temporal_ids cover {len(times)} views, the batch has {batch}"
        temporal = torch.from_numpy(sincos_1d(self.embed_dim, np.maximum(times, 0))).to(device=device, dtype=dtype)
        keys = keys + temporal.masked_fill(torch.from_numpy(times < 0)[:, None].to(device), 0)[None]
        outs, start = [], 0
        for group in temporal_ids:  # the group's views' tokens side by side, one attention
            end = start + len(group)
            outs.append(self.attn(q, keys[:, start:end].permute(1, 0, 2).reshape(-1, self.embed_dim),
                                  x[:, start:end].permute(1, 0, 2).reshape(-1, self.embed_dim),
                                  key_padding_mask=key_padding_mask[start:end].reshape(-1))[0])
            start = end
        return self.ln_post(torch.stack(outs)) @ self.proj
