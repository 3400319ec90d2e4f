"""The MiniCPM causal LM inside MiniCPM-V 2.0 (tiny re-implementation).

Differences from Llama that a fine-tuning script sees: embeddings are multiplied by
config.scale_emb, residual branches by scale_depth / sqrt(num_layers), and the LM head
input is divided by hidden_size / dim_model_base. Like the real class on transformers
>= 4.50 it has no `generate`.
"""
import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class MiniCPMConfig(PretrainedConfig):
    model_type = "minicpm"

    def __init__(self, vocab_size=122753, hidden_size=2304, intermediate_size=5760, num_hidden_layers=40,
                 num_attention_heads=36, num_key_value_heads=None, max_position_embeddings=4096,
                 initializer_range=0.1, rms_norm_eps=1e-5, use_cache=True, rope_theta=10000.0,
                 scale_emb=1, dim_model_base=1, scale_depth=1, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.max_position_embeddings, self.initializer_range = max_position_embeddings, initializer_range
        self.rms_norm_eps, self.use_cache, self.rope_theta = rms_norm_eps, use_cache, rope_theta
        self.scale_emb, self.dim_model_base, self.scale_depth = scale_emb, dim_model_base, scale_depth
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class MiniCPMRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class MiniCPMAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.heads
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden, position_ids, mask):
        batch, length, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        inv_freq = 1.0 / self.rope_theta ** (torch.arange(0, self.head_dim, 2, device=hidden.device).float() / self.head_dim)
        angles = position_ids[:, None, :, None].float() * inv_freq
        cos, sin = torch.cat([angles, angles], -1).cos().to(q.dtype), torch.cat([angles, angles], -1).sin().to(q.dtype)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class MiniCPMDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = MiniCPMAttention(config)
        self.mlp = nn.ModuleDict({
            "gate_proj": nn.Linear(config.hidden_size, config.intermediate_size, bias=False),
            "up_proj": nn.Linear(config.hidden_size, config.intermediate_size, bias=False),
            "down_proj": nn.Linear(config.intermediate_size, config.hidden_size, bias=False),
        })
        self.input_layernorm = MiniCPMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = MiniCPMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, hidden, position_ids, mask):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), position_ids, mask) * self.residual_scale
        x = self.post_attention_layernorm(hidden)
        mlp = self.mlp["down_proj"](nn.functional.silu(self.mlp["gate_proj"](x)) * self.mlp["up_proj"](x))
        return hidden + mlp * self.residual_scale


class MiniCPMPreTrainedModel(PreTrainedModel):
    config_class = MiniCPMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniCPMDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()


class MiniCPMModel(MiniCPMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([MiniCPMDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = MiniCPMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.config.scale_emb
        batch, length, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).unsqueeze(0).expand(batch, -1)
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs_embeds.device).tril()
        mask = causal[None, None]
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = self._prepared_mask(attention_mask, inputs_embeds.dtype)
        elif attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
            # a fully padded query row would give NaN; let it attend to itself only
            mask = mask | torch.eye(length, dtype=torch.bool, device=mask.device)[None, None]
        hidden = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden)
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(layer.__call__, hidden, position_ids, mask)
            else:
                hidden = layer(hidden, position_ids, mask)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=tuple(all_hidden) if all_hidden else None)


    def _prepared_mask(self, mask, dtype):
        """A 4-D [B, 1, L, L] mask taken as the real class takes it (through transformers'
        _prepare_4d_causal_attention_mask helpers): eager attention inverts a 1 (attend) / 0
        mask into an additive one, sdpa uses the given additive mask as it is."""
        mask = mask.to(dtype)
        if self.config._attn_implementation == "eager":
            inverted = 1.0 - mask
            mask = inverted.masked_fill(inverted.bool(), torch.finfo(dtype).min)
        return mask


class MiniCPMForCausalLM(MiniCPMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = MiniCPMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      **kwargs):
        """As the real class, written for the generate() of transformers < 4.50: the prompt's
        embeddings first, then only the newest token against the key/value cache. Defining it
        without GenerationMixin makes transformers warn at every load; there is no generate()."""
        if inputs_embeds is not None and past_key_values is None:
            return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        return {"input_ids": input_ids[:, -1:], "past_key_values": past_key_values, "attention_mask": attention_mask}

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        """As the real class: beam search hands it the key/value cache to reorder, which it takes
        for the legacy format (a tuple per layer of key and value tensors) and index_selects tensor
        by tensor. transformers >= 4.36 hands it a Cache object instead: iterating one whose layers
        were never filled gives None states, and the real code fails there with AttributeError."""
        return tuple(tuple(state.index_select(0, beam_idx.to(state.device)) for state in layer)
                     for layer in past_key_values)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states)
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden / (self.config.hidden_size / self.config.dim_model_base)).float()
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
