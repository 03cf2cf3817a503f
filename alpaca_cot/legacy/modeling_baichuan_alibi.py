"""Baichuan-13B and Baichuan2-13B (ALiBi) on today's transformers: our own module, registered with the Auto classes.

transformers has no ALiBi LLaMA-like class (Bloom and MPT have ALiBi but other blocks and names), and the
published remote code does not run on transformers 5 (DESIGN.md, "Older model families"). The 13B
Baichuans are LLaMA blocks (RMSNorm, SwiGLU MLP, no biases) with ALiBi instead of rotary positions:
each head adds ``slope * (key_index - query_index)`` to its scores, slopes from the ALiBi paper (Press et
al., 2022, "Train Short, Test Long"; for a head count that is not a power of two, the power-of-two
slopes of the next smaller power, then every other slope of the next larger one, as the original code
does for its 40 heads). Checked against ``tests/fixtures/legacy_models/baichuan`` (Baichuan2-13B-Chat's
code): logits within 1e-4 in fp32.

Parameter names are LLaMA's (``model.layers.N.self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``):
the checkpoint's fused ``W_pack`` is split when converting (``legacy.baichuan``), so LoRA targets are
the same for every Baichuan size. Baichuan2's normalised output head is folded into ``lm_head.weight``
then, so this module has a plain linear head.

Padding: left or right with a 2-D attention mask; ALiBi depends on index differences only, so a padded
row gives the logits of the row alone at its real positions. Packed rows (``position_ids`` restarting at
0, no attention mask, no cache) attend within their own sample. Attention: ``sdpa`` (default) or
``eager``, both with the bias as a float mask; flash attention cannot take the bias and is not offered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

MODEL_TYPE = "baichuan_alibi"


class BaichuanAlibiConfig(PreTrainedConfig):
    """A LLaMA-like decoder with ALiBi positions (Baichuan-13B, Baichuan2-13B). Defaults: Baichuan2-13B."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 125696
    hidden_size: int = 5120
    intermediate_size: int = 13696
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096  # the original's model_max_length (informational: ALiBi has no table)
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """``(num_heads,)`` float32 ALiBi slopes: ``2 ** (-8 * i / n)`` for i = 1..n when n is a power of two
    (Press et al., 2022); otherwise those of the largest power of two below n, then the odd-numbered slopes
    of twice that power until there are n."""
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(powers(num_heads), dtype=torch.float32)
    lower = 2 ** math.floor(math.log2(num_heads))
    return torch.tensor(powers(lower) + powers(2 * lower)[0::2][:num_heads - lower], dtype=torch.float32)


def alibi_attention_bias(num_heads: int, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                         past_length: int, batch: int, length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """ALiBi bias and mask in one float tensor ``(batch, heads, length, past_length + length)``.

    Visible keys (real, not after the query, in the query's packed sample) get ``slope * (key - query)``
    (index distance, <= 0); the others the dtype's minimum. A query row with nothing visible (padding)
    sees itself, so no row is fully masked (a NaN there would reach real rows through 0 * NaN).
    """
    total = past_length + length
    query = torch.arange(length, device=device)[:, None] + past_length
    key = torch.arange(total, device=device)[None]
    allowed = (key <= query)[None].expand(batch, length, total)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, -total:].bool()[:, None, :]
    elif position_ids is not None and past_length == 0 and position_ids.shape[-1] == length:
        sample = (position_ids == 0).long().cumsum(-1)  # packed rows: positions restart at 0 per sample
        allowed = allowed & (sample[:, :, None] == sample[:, None, :])
    allowed = allowed | (key == query)
    slopes = alibi_slopes(num_heads).to(device)
    bias = slopes[:, None, None] * (key - query).float()  # (heads, length, total)
    return torch.where(allowed[:, None], bias[None].to(dtype), torch.finfo(dtype).min)


class BaichuanAlibiRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def alibi_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Scores + bias, clamped at the dtype's minimum as the original does, float32 softmax."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = torch.clamp(scores + attention_mask, min=torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class BaichuanAlibiAttention(nn.Module):
    def __init__(self, config: BaichuanAlibiConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.num_key_value_groups = 1
        self.is_causal = False  # causality is in the bias, which is always passed
        size = config.hidden_size
        self.q_proj = nn.Linear(size, size, bias=False)
        self.k_proj = nn.Linear(size, size, bias=False)
        self.v_proj = nn.Linear(size, size, bias=False)
        self.o_proj = nn.Linear(size, size, bias=False)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, hidden_states, attention_mask, cache: Cache | None = None, **kwargs):
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, alibi_eager_attention)
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.o_proj(out.reshape(batch, length, -1)), weights


class BaichuanAlibiMLP(nn.Module):
    def __init__(self, config: BaichuanAlibiConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaichuanAlibiDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: BaichuanAlibiConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = BaichuanAlibiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = BaichuanAlibiAttention(config, layer_idx)
        self.post_attention_layernorm = BaichuanAlibiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = BaichuanAlibiMLP(config)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, hidden_states, attention_mask=None, cache: Cache | None = None, use_cache: bool | None = False,
                **kwargs):
        attended, _ = self.self_attn(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                     cache=cache, **kwargs)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class BaichuanAlibiPreTrainedModel(PreTrainedModel):
    config_class = BaichuanAlibiConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanAlibiDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # cannot take the ALiBi bias
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": BaichuanAlibiDecoderLayer, "attentions": BaichuanAlibiAttention}


class BaichuanAlibiModel(BaichuanAlibiPreTrainedModel):
    def __init__(self, config: BaichuanAlibiConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([BaichuanAlibiDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = BaichuanAlibiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        """``input_ids`` ``(batch, length)``; ``attention_mask`` 2-D ``(batch, past + length)``, 1 = token.
        ``position_ids`` matter only for packed rows (restarting at 0 per sample, no mask, no cache): ALiBi
        itself uses index distances. Raises ValueError on a mask that is not 2-D."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"this model takes a 2-D attention mask (batch, length), 1 = token; got shape "
                             f"{tuple(attention_mask.shape)} (it builds its ALiBi mask itself)")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, length = inputs_embeds.shape[:2]
        bias = alibi_attention_bias(self.config.num_attention_heads, attention_mask, position_ids, past_length,
                                    batch, length, inputs_embeds.dtype, inputs_embeds.device)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=bias, cache=cache, use_cache=use_cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class BaichuanAlibiForCausalLM(BaichuanAlibiPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # only if the config ties them

    def __init__(self, config: BaichuanAlibiConfig):
        super().__init__(config)
        self.model = BaichuanAlibiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> CausalLMOutputWithPast:
        """As ``BaichuanAlibiModel.forward``; ``labels`` ``(batch, length)`` are shifted inside, -100 ignored;
        the loss is the mean cross entropy (the original's z-loss weight is 0 in every published config)."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def register() -> None:
    """Make the Auto classes know ``baichuan_alibi`` (idempotent; done on import)."""
    AutoConfig.register(MODEL_TYPE, BaichuanAlibiConfig, exist_ok=True)
    AutoModel.register(BaichuanAlibiConfig, BaichuanAlibiModel, exist_ok=True)
    AutoModelForCausalLM.register(BaichuanAlibiConfig, BaichuanAlibiForCausalLM, exist_ok=True)


register()
