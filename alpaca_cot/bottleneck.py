"""Bottleneck adapters (sequential, parallel, mh_adapter) registered as a PEFT method.

Importing this module adds ``PeftType.BOTTLENECK`` and registers ``"bottleneck"`` with
PEFT, so ``get_peft_model``, ``save_pretrained``, ``PeftConfig.from_pretrained`` and
``PeftModel.from_pretrained`` work as for built-in methods. Any process that loads a
bottleneck adapter must import this module first (else PEFT raises ``KeyError: 'BOTTLENECK'``).

    from alpaca_cot.bottleneck import placement_config
    model = peft.get_peft_model(base, placement_config("llama", "sadapter_h"))

One adapter is ``x -> s * up(act(down(dropout(x))))``; with ``init_weights`` the
up-projection is zero, so a fresh adapter adds nothing. The non-linearity means an
adapter cannot be folded into the base weights: merging raises ``NotImplementedError``.
Relies on peft>=0.21,<0.22 (private enum internals, see ``_add_peft_type``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, register_peft_method
from torch import nn

_NO_MERGE = (
    "Bottleneck adapters cannot be merged: the non-linearity between the down- and "
    "up-projection cannot be folded into the base weights. Keep base + adapter (PeftModel) instead."
)
ADAPTER_TYPES = ("sequential", "parallel", "mh_adapter")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


def _add_peft_type(name: str) -> None:
    """Add a member to the closed ``PeftType`` enum in place (no-op if present)."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ refuses new members
    PeftType._member_map_[name] = member
    PeftType._member_names_.append(name)
    PeftType._value2member_map_[name] = member


_add_peft_type("BOTTLENECK")

# --- placements of the original project --------------------------------------------------

# model_type -> (attention output projection, feed-forward output projection, feed-forward block)
_SITES: dict[str, tuple[str, str, str]] = {
    "llama": ("o_proj", "down_proj", "mlp"),
    "mistral": ("o_proj", "down_proj", "mlp"),
    "qwen2": ("o_proj", "down_proj", "mlp"),
    "qwen3": ("o_proj", "down_proj", "mlp"),
    "gemma": ("o_proj", "down_proj", "mlp"),
    "gemma2": ("o_proj", "down_proj", "mlp"),
    "gemma3_text": ("o_proj", "down_proj", "mlp"),
    "phi3": ("o_proj", "down_proj", "mlp"),
    "bloom": ("self_attention.dense", "mlp.dense_4h_to_h", "mlp"),
    "falcon": ("self_attention.dense", "mlp.dense_4h_to_h", "mlp"),
    "gpt_neox": ("attention.dense", "mlp.dense_4h_to_h", "mlp"),
}
_FALLBACK_SITES = _SITES["llama"]  # most current HF decoders use the LLaMA module names


@dataclass(frozen=True)
class Placement:
    """Where and how a preset puts its adapters.

    Attributes:
        adapter_type: one of ``ADAPTER_TYPES``.
        sites: indices into a ``_SITES`` row (0 attention out, 1 FFN out, 2 FFN block).
        scaling: default output scale ``s``.
    """

    adapter_type: str
    sites: tuple[int, ...]
    scaling: float = 1.0


# Houlsby et al. 2019: sequential after attention output and after the FFN.
HOULSBY = Placement("sequential", (0, 1))
# Pfeiffer et al. 2021: sequential after the FFN only.
PFEIFFER = Placement("sequential", (1,))
# He et al. 2022 ("Towards a unified view"): parallel beside the whole FFN block, reading
# the block's input and adding to its output, scaled by s=4 (their best FFN variant).
PARALLEL = Placement("parallel", (2,), scaling=4.0)
# Adapter on the concatenated attention heads, before the output projection.
MH_ADAPTER = Placement("mh_adapter", (0,))
PLACEMENTS = {"sadapter_h": HOULSBY, "sadapter_p": PFEIFFER, "padapter": PARALLEL, "mh_adapter": MH_ADAPTER}
_DEFAULT_PLACEMENT = {"sequential": HOULSBY, "parallel": PARALLEL, "mh_adapter": MH_ADAPTER}


def placement_targets(model_type: str, placement: str | Placement) -> list[str]:
    """Target module names for a placement (``PLACEMENTS`` key or ``Placement``).

    Unknown model types fall back to the LLaMA names (``o_proj``, ``down_proj``, ``mlp``).
    """
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; choose from {sorted(PLACEMENTS)}")
        placement = PLACEMENTS[placement]
    sites = _SITES.get(model_type, _FALLBACK_SITES)
    return [sites[i] for i in placement.sites]


def placement_config(model_type: str, placement: str, **overrides: Any) -> "BottleneckConfig":
    """A ``BottleneckConfig`` for a placement; ``overrides`` replace any field."""
    targets = placement_targets(model_type, placement)  # raises on an unknown name
    preset = PLACEMENTS[placement]
    kwargs = {"target_modules": targets, "adapter_type": preset.adapter_type, "scaling": preset.scaling}
    return BottleneckConfig(**{**kwargs, **overrides})


# --- config ------------------------------------------------------------------------------


@dataclass
class BottleneckConfig(PeftConfig):
    """Configuration of a ``BottleneckModel`` (see the module docstring)."""

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (suffix match) or a regex to wrap, e.g. ['down_proj'] or ['mlp']. "
                  "Linear layers or blocks containing Linear layers. None: the placement default of "
                  "`adapter_type` for the model type."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex to leave without adapters."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Layer indices to adapt; None: all layers."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the layer list (e.g. 'layers', 'h') for layers_to_transform."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules trained fully and saved with the adapter."}
    )
    bottleneck_size: int = field(default=64, metadata={"help": "Width r of the down-projection."})
    adapter_type: Literal["sequential", "parallel", "mh_adapter"] = field(
        default="sequential",
        metadata={"help": "sequential: y = f(x) + s*A(f(x)); parallel: y = f(x) + s*A(x); "
                  "mh_adapter: y = f(x + s*A(x))."},
    )
    non_linearity: str = field(default="relu", metadata={"help": f"One of {sorted(ACTIVATIONS)}."})
    scaling: float = field(default=1.0, metadata={"help": "Scale s of the adapter output (parallel: often 4)."})
    adapter_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    init_weights: bool = field(
        default=True, metadata={"help": "Zero-init the up-projection so a new adapter adds nothing."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.BOTTLENECK
        for name in ("target_modules", "exclude_modules"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, set(getattr(self, name)))
        if self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type must be one of {ADAPTER_TYPES}, got {self.adapter_type!r}")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(f"non_linearity must be one of {sorted(ACTIVATIONS)}, got {self.non_linearity!r}")


# --- layer -------------------------------------------------------------------------------


def _feature_dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) features: the module's own (Linear, bnb Linear4bit/8bitLt), else those of
    its first and last ``nn.Linear`` (a block such as LlamaMLP: gate_proj in, down_proj out)."""
    if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int):
        return module.in_features, module.out_features
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"bottleneck adapters need an nn.Linear or a block of them, got {type(module).__name__}")
    return linears[0].in_features, linears[-1].out_features


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps a target module and adds bottleneck adapters keyed by adapter name."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_dropout", "bottleneck_type", "bottleneck_scaling", "bottleneck_act")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict()
        self.bottleneck_up = nn.ModuleDict()
        self.bottleneck_dropout = nn.ModuleDict()
        self.bottleneck_type: dict[str, str] = {}
        self.bottleneck_scaling: dict[str, float] = {}
        self.bottleneck_act: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.in_features, self.out_features = _feature_dims(self.get_base_layer())
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        """Add (or replace) the adapter ``adapter_name``; its weights are fp32."""
        kind = config.adapter_type
        d_in = self.out_features if kind == "sequential" else self.in_features
        d_out = self.in_features if kind == "mh_adapter" else self.out_features
        down = nn.Linear(d_in, config.bottleneck_size, dtype=torch.float32)
        up = nn.Linear(config.bottleneck_size, d_out, dtype=torch.float32)
        if config.init_weights:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        base_param = next(self.get_base_layer().parameters(), None)
        if base_param is not None and down.weight.device.type != "meta":
            down, up = down.to(base_param.device), up.to(base_param.device)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        drop = config.adapter_dropout
        self.bottleneck_dropout[adapter_name] = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.bottleneck_type[adapter_name] = kind
        self.bottleneck_scaling[adapter_name] = config.scaling
        self.bottleneck_act[adapter_name] = config.non_linearity
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _adapter(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """``s * up(act(down(dropout(h))))``, computed in the adapter dtype, returned in h's."""
        down = self.bottleneck_down[name]
        z = self.bottleneck_dropout[name](self._cast_input_dtype(h, down.weight.dtype))
        z = self.bottleneck_up[name](ACTIVATIONS[self.bottleneck_act[name]](down(z)))
        return (z * self.bottleneck_scaling[name]).to(h.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        active = [a for a in self.active_adapters if a in self.bottleneck_down]
        if self.disable_adapters or not active:
            return self.base_layer(x, *args, **kwargs)
        x_in = x
        for name in active:
            if self.bottleneck_type[name] == "mh_adapter":
                x = x + self._adapter(name, x)
        result = self.base_layer(x, *args, **kwargs)
        # attention blocks return (hidden, weights, ...): adapt the hidden states only
        out = result[0] if isinstance(result, tuple) else result
        for name in active:
            kind = self.bottleneck_type[name]
            if kind == "parallel":
                out = out + self._adapter(name, x_in)
            elif kind == "sequential":
                out = out + self._adapter(name, out)
        return (out, *result[1:]) if isinstance(result, tuple) else out

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise NotImplementedError(_NO_MERGE)

    def unmerge(self) -> None:
        raise NotImplementedError(_NO_MERGE)

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


# --- tuner -------------------------------------------------------------------------------


class BottleneckModel(BaseTuner):
    """PEFT tuner that wraps the target modules of a model in ``BottleneckLayer``s."""

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping = {mt: placement_targets(mt, HOULSBY) for mt in _SITES}

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        """Default targets follow the placement of ``adapter_type`` (see ``_DEFAULT_PLACEMENT``)."""
        if peft_config.target_modules is None:
            placement = _DEFAULT_PLACEMENT[peft_config.adapter_type]
            peft_config.target_modules = set(placement_targets(model_config.get("model_type", ""), placement))
        return peft_config

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key,
                            parameter_name=None) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = BottleneckLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter starts frozen
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        if getattr(child, "base_layer", None) is new_module:
            # unloading: put the wrapped module back untouched (PEFT's version copies `weight`,
            # which a block target such as LlamaMLP does not have)
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _check_merge_allowed(self):
        raise NotImplementedError(_NO_MERGE)

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        raise NotImplementedError(_NO_MERGE)

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise NotImplementedError(_NO_MERGE)


if PeftType.BOTTLENECK not in PEFT_TYPE_TO_CONFIG_MAPPING:  # a second import (e.g. reload) is a no-op
    register_peft_method(name="bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel)
