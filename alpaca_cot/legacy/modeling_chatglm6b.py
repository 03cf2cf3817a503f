"""ChatGLM-6B (v1) on today's transformers: our own implementation, registered with the Auto classes.

transformers has no class for ChatGLM-6B v1 (its ``Glm`` class is GLM-4 / ChatGLM2-3), and the published
remote code does not run on transformers 5 (DESIGN.md, "Older model families"). This module implements
the architecture as the published THUDM/chatglm-6b code computes it (checked against
``tests/fixtures/legacy_models/chatglm``, logits within 1e-4 in fp32):

- **2-D rotary positions.** Each head's q and k are cut in two halves; the first half is rotated with
  channel 0 (the token index, frozen at the ``[gMASK]``/``[MASK]`` index from ``<sop>`` on), the second
  with channel 1 (0 before ``<sop>``, then 1, 2, ...); rotate-half style inside each half; the rotary
  frequencies are rounded to float16 as the original computes them.
- **Prefix attention.** Bidirectional over the context (every token before the first ``<sop>``),
  causal from ``<sop>`` on.
- Per-head interleaved ``query_key_value`` ([q | k | v] inside each head), tanh-GELU MLP without a gate,
  residuals ``alpha * LayerNorm(x) + sublayer(LayerNorm(x))`` with ``alpha = sqrt(2 * 28)`` whatever the
  layer count (the published code never passes its layer count to the block, which defaults to 28),
  tied output head.

Parameter names are the published ones (``transformer.layers.N.attention.query_key_value`` ...), so
LoRA targets and adapters trained on the original code keep their names.

Every sequence needs a mask token (``[gMASK]`` or ``[MASK]``) and ``<sop>`` (the family's tokenizer
appends ``[gMASK] <sop>`` to every prompt); a training sample is ``prompt [gMASK] <sop> response <eop>``.
Rows may be padded on either side with a 2-D attention mask: positions count real tokens only, so a
padded row gives the logits of the row alone. The first ``<sop>`` of a row ends its context; tokens after
it are causal whatever they are.

Attention: ``sdpa`` (default) and ``eager``. The eager path reproduces the original arithmetic exactly
(scores filled with -10000 where masked, query divided by ``layer_index + 1`` and scores multiplied back
before a float32 softmax; the scaling exists to keep fp16 scores in range). With a boolean mask SDPA
gives the same result at every real position (exp(-10000) is 0 in float32 as in SDPA's -inf), so SDPA
is the default; the two differ only at padded query rows, whose outputs nothing reads (we let such a row
attend to itself, so it is never fully masked). Flash attention is not offered: it cannot take the
prefix mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

MODEL_TYPE = "chatglm6b"


class ChatGLM6BConfig(PreTrainedConfig):
    """ChatGLM-6B (v1). Field names follow transformers; the legacy names are mapped by ``legacy.chatglm6b``.

    Special ids (defaults: THUDM/chatglm-6b since its 2023-04 vocabulary of 130528): ``mask_token_id``
    ``[MASK]``, ``gmask_token_id`` ``[gMASK]``, ``bos_token_id`` ``<sop>`` (start of the generated part),
    ``eos_token_id`` ``<eop>``.
    """

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 130528
    hidden_size: int = 4096
    intermediate_size: int = 16384
    num_hidden_layers: int = 28
    num_attention_heads: int = 32
    layer_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048  # the original's max_sequence_length (informational: rotary has no table)
    rotary_base: float = 10000.0
    mask_token_id: int = 130000
    gmask_token_id: int = 130001
    bos_token_id: int | None = 130004
    eos_token_id: int | list[int] | None = 130005
    pad_token_id: int | None = 3
    # The original's residual scale, sqrt(2 * num_layers) with the layer count GLMBlock defaults to (28): the
    # published code never passes the configured count, so every ChatGLM-6B checkpoint uses sqrt(56).
    residual_alpha: float = (2 * 28) ** 0.5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        if self.hidden_size % (4 * self.num_attention_heads):
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 * num_attention_heads "
                             f"({self.num_attention_heads}): each head is cut in two rotary halves")


# ---------------------------------------------------------------- positions and mask


def chatglm_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      config: ChatGLM6BConfig) -> torch.Tensor:
    """The 2-D rotary positions of whole sequences, as the original code builds them.

    Args:
        input_ids: ``(batch, length)`` ids of whole sequences (from their first token).
        attention_mask: ``(batch, length)``, 1 = real token, 0 = padding (either side), or None.
    Returns:
        ``(batch, 2, length)`` long: channel 0 = index among the row's real tokens, frozen at the mask
        token's index from ``<sop>`` on; channel 1 = 0 before ``<sop>``, then 1, 2, ...; 0 at padding.
    Raises:
        ValueError: a row (with real tokens) lacks ``<sop>`` or a mask token (``[gMASK]``/``[MASK]``).
    """
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    length = input_ids.shape[1]
    column = torch.arange(length, device=input_ids.device)
    index = real.long().cumsum(-1) - 1  # index among the real tokens

    def first(hit):  # first column where hit is True; `length` where none
        return torch.where(hit & real, column, length).min(-1).values

    sop, gmask, mask = (first(input_ids == t) for t in (config.bos_token_id, config.gmask_token_id,
                                                          config.mask_token_id))
    mask = torch.where(gmask < length, gmask, mask)  # [gMASK] when the row has one, as the original prefers
    bad = real.any(-1) & ((sop == length) | (mask == length))
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"ChatGLM-6B needs a mask token ([gMASK] id {config.gmask_token_id} or [MASK] id "
            f"{config.mask_token_id}) and <sop> (id {config.bos_token_id}) in every sequence (row {row} lacks "
            "one): encode prompts with the family's tokenizer/template, which ends every prompt with "
            "[gMASK] <sop>, or pass position_ids of shape (batch, 2, length)")
    mask_index = index.gather(-1, mask.clamp(max=length - 1)[:, None])
    sop_index = index.gather(-1, sop.clamp(max=length - 1)[:, None])
    generated = column[None] >= sop[:, None]
    channel0 = torch.where(generated, mask_index, index)
    channel1 = torch.where(generated, index - sop_index + 1, 0)
    return torch.stack([channel0, channel1], 1).masked_fill(~real[:, None], 0)


def prefix_attention_mask(position_ids: torch.Tensor, attention_mask: torch.Tensor | None, past_length: int,
                          batch: int, length: int, device) -> torch.Tensor:
    """Which keys each query may see: ``(batch, 1, length, past_length + length)`` bool, True = attend.

    A key is visible when it is a real token and either not after the query or both are context tokens
    (channel 1 of the position is 0). Cached keys all precede the queries, so their context flag is not
    needed. A query row with nothing visible (padding) sees itself, so no row is fully masked.
    """
    total = past_length + length
    real = torch.ones(batch, total, dtype=torch.bool, device=device) if attention_mask is None \
        else attention_mask[:, -total:].bool()
    context = (position_ids[:, 1] == 0) & real[:, past_length:]  # (batch, length)
    query = torch.arange(length, device=device)[:, None] + past_length
    key = torch.arange(total, device=device)[None]
    visible = key <= query  # (length, total)
    both_context = torch.zeros(batch, length, total, dtype=torch.bool, device=device)
    both_context[:, :, past_length:] = context[:, :, None] & context[:, None, :]
    allowed = (visible[None] | both_context) & real[:, None, :]
    allowed |= key == query  # never an empty row
    return allowed[:, None]


# ---------------------------------------------------------------- layers


class ChatGLM6BRotaryEmbedding(nn.Module):
    """cos/sin of both position channels. No buffers: the few frequencies are recomputed per call, so
    nothing is left uninitialised when transformers builds the model on the meta device."""

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.dim = config.hidden_size // config.num_attention_heads // 2  # rotary width of each half-head
        self.base = config.rotary_base

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        # Frequencies in float32, rounded through float16 as the original computes them.
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=x.device).float() / self.dim))
        inv_freq = inv_freq.half().float()
        freqs = position_ids.float()[..., None] * inv_freq  # (batch, 2, length, dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_2d_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k: ``(batch, heads, length, head_dim)``; cos, sin: ``(batch, 2, length, head_dim / 2)``."""
    out = []
    for t in (q, k):
        halves = t.chunk(2, dim=-1)
        out.append(torch.cat([h * cos[:, c, None] + rotate_half(h) * sin[:, c, None]
                              for c, h in enumerate(halves)], dim=-1))
    return out


def chatglm6b_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The original arithmetic: -10000 fill, layer-index scaling, float32 softmax. Shapes as SDPA's."""
    coeff = float(module.layer_idx + 1)
    scores = torch.matmul(query / (math.sqrt(query.shape[-1]) * coeff), key.transpose(2, 3))
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, -10000.0)
    probs = F.softmax(scores.float() * coeff, dim=-1).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class ChatGLM6BAttention(nn.Module):
    def __init__(self, config: ChatGLM6BConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.num_key_value_groups = 1
        self.is_causal = False  # the prefix mask is always passed
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, hidden_states, position_embeddings, attention_mask, cache: Cache | None = None, **kwargs):
        batch, length, _ = hidden_states.shape
        # (batch, length, heads, 3 * head_dim): [q | k | v] inside each head, as the original lays them out.
        qkv = self.query_key_value(hidden_states).view(batch, length, self.num_heads, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.split(self.head_dim, dim=-1))
        q, k = apply_2d_rotary(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                          chatglm6b_eager_attention)
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.dense(out.reshape(batch, length, -1)), weights


class ChatGLM6BMLP(nn.Module):
    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class ChatGLM6BBlock(GradientCheckpointingLayer):
    def __init__(self, config: ChatGLM6BConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ChatGLM6BAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ChatGLM6BMLP(config)
        self.alpha = config.residual_alpha  # residuals start from the norm output, as in the original

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache: Cache | None = None,
                use_cache: bool | None = False, **kwargs):
        x = self.input_layernorm(hidden_states)
        attended, _ = self.attention(x, position_embeddings=position_embeddings, attention_mask=attention_mask,
                                     cache=cache, **kwargs)
        hidden_states = x * self.alpha + attended
        x = self.post_attention_layernorm(hidden_states)
        return x * self.alpha + self.mlp(x)


# ---------------------------------------------------------------- models


class ChatGLM6BPreTrainedModel(PreTrainedModel):
    config_class = ChatGLM6BConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ChatGLM6BBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False  # cannot take the prefix mask
    _supports_flex_attn = False
    _supports_attention_backend = True  # our eager/sdpa functions go through ALL_ATTENTION_FUNCTIONS
    _can_record_outputs = {"hidden_states": ChatGLM6BBlock, "attentions": ChatGLM6BAttention}


class ChatGLM6BModel(ChatGLM6BPreTrainedModel):
    def __init__(self, config: ChatGLM6BConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([ChatGLM6BBlock(config, i) for i in range(config.num_hidden_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = ChatGLM6BRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        """``input_ids`` ``(batch, length)``; ``attention_mask`` 2-D ``(batch, past + length)``, 1 = token;
        ``position_ids`` ``(batch, 2, length)`` (built from the ids when None; required with a non-empty cache).
        Raises ValueError on a 4-D mask, 1-D positions, or ids without ``[gMASK]``/``<sop>``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"ChatGLM-6B takes a 2-D attention mask (batch, length), 1 = token; got shape "
                             f"{tuple(attention_mask.shape)} (it builds its prefix mask itself)")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if past_length or input_ids is None:
                raise ValueError("ChatGLM-6B needs position_ids of shape (batch, 2, length) when continuing "
                                 "from a cache or given inputs_embeds (generate() builds them)")
            mask = None if attention_mask is None else attention_mask[:, -length:]
            position_ids = chatglm_positions(input_ids, mask, self.config)
        elif position_ids.dim() != 3 or position_ids.shape[1] != 2:
            raise ValueError(f"ChatGLM-6B position_ids have shape (batch, 2, length) (2-D positions); got "
                             f"{tuple(position_ids.shape)}")
        mask = prefix_attention_mask(position_ids, attention_mask, past_length, batch, length,
                                     inputs_embeds.device)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=position_embeddings,
                                  cache=cache, use_cache=use_cache, **kwargs)
        hidden_states = self.final_layernorm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class ChatGLM6BForCausalLM(ChatGLM6BPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__(config)
        self.transformer = ChatGLM6BModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.word_embeddings = value

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        return None  # the 2-D positions are rebuilt from the whole sequence at every step (below)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      **kwargs):
        kwargs.pop("position_ids", None)
        inputs = super().prepare_inputs_for_generation(input_ids, next_sequence_length=next_sequence_length,
                                                       cache=cache, attention_mask=attention_mask, **kwargs)
        if input_ids.shape[1] == 0:
            raise ValueError("ChatGLM-6B generates from input_ids (its positions come from [gMASK]/<sop>)")
        # New tokens continue the 2-D rule: channel 0 stays at the mask token, channel 1 counts on.
        width = inputs["input_ids"].shape[1] if inputs.get("input_ids") is not None else input_ids.shape[1]
        inputs["position_ids"] = chatglm_positions(input_ids, attention_mask, self.config)[..., -width:]
        return inputs

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> CausalLMOutputWithPast:
        """As ``ChatGLM6BModel.forward``; ``labels`` ``(batch, length)`` are shifted inside (label i is
        predicted at i - 1), -100 ignored; the loss is the mean cross entropy in float32."""
        outputs = self.transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def register() -> None:
    """Make ``AutoConfig``/``AutoModel``/``AutoModelForCausalLM`` know ``chatglm6b`` (idempotent; done on import)."""
    AutoConfig.register(MODEL_TYPE, ChatGLM6BConfig, exist_ok=True)
    AutoModel.register(ChatGLM6BConfig, ChatGLM6BModel, exist_ok=True)
    AutoModelForCausalLM.register(ChatGLM6BConfig, ChatGLM6BForCausalLM, exist_ok=True)


register()
