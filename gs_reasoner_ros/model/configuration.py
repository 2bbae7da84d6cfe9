"""GS-Reasoner configuration: reads and writes the release's `config.json` (model_type "llava_qwen").

Every config class of model/ lives here (`GSReasonerConfig`, `SonataConfig`), and this module
imports neither torch nor the model at import time, so prompts and tools can read its constants cheaply.

The released file is a LLaVA-Qwen2 config plus the GS-Reasoner keys. Two optional objects are our
extensions, so that small test models can shrink the parts whose sizes the release hard-codes:
`"sonata"` (overrides of the Sonata/PTv3 class defaults, read by `SonataConfig.from_dict`) and
`"vision_config"` (SigLIP geometry; the release has none and names the tower in `mm_vision_tower`).
Unknown keys are kept and written back unchanged.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

IMAGE_TOKEN_INDEX = -200  # the authors' placeholder id for <image> in input_ids

# The released vision tower (google/siglip-so400m-patch14-384) as published: 27 layers, of which the
# authors keep 26 (the last one is deleted and its output is never used).
SIGLIP_SO400M_PATCH14_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}
KNOWN_VISION_TOWERS = {"google/siglip-so400m-patch14-384": SIGLIP_SO400M_PATCH14_384}
SIGLIP_KEYS = tuple(SIGLIP_SO400M_PATCH14_384)

SONATA_HIDDEN_SIZE = 1232  # 48+96+192+384+512, the authors hard-code it
POSITION_PATH_SIZE = 2048  # output width of `pointnet_pooling.mlp`, hard-coded too
# The space-filling curves Sonata serialises voxels along (model/serialization.py draws them).
SERIALIZATION_ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")

# Values of the release (Qwen2-7B backbone, LLaVA-Video settings); a config.json overrides them.
DEFAULTS: dict[str, Any] = {
    "architectures": ["LlavaQwenForCausalLM"],
    "model_type": "llava_qwen",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 151653,
    "hidden_act": "silu",
    "rope_theta": 10000.0,  # transformers' Qwen2 default when a file lacks the key
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": None,
    "eos_token_id": None,
    "mm_hidden_size": 1152,
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_tower": "google/siglip-so400m-patch14-384",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_spatial_pool_mode": "bilinear",
    "mm_spatial_pool_stride": 2,
    "mm_newline_position": "grid",
    "mm_patch_merge_type": "spatial_unpad",
    "world_position_embedding_type": "sonata_sample_64",
}


# Keys of the authors' PointTransformerV3 kwargs that do not change inference with their values here.
_IGNORED_UPSTREAM_KEYS = {
    "drop_path", "attn_drop", "proj_drop", "enable_flash", "upcast_attention", "upcast_softmax",
    "traceable", "freeze_encoder", "dec_depths", "dec_channels", "dec_num_head", "dec_patch_size",
}
# Upstream kwargs that change the architecture: accepted only with the released value.
_FIXED_UPSTREAM_KEYS = {
    "enc_mode": True, "pre_norm": True, "enable_rpe": False, "layer_scale": None,
    "mask_token": False, "qk_scale": None,
}


@dataclass
class SonataConfig:
    """Architecture of the Sonata encoder; defaults are the released GS-Reasoner values."""

    in_channels: int = 6
    grid_size: float = 0.025
    enc_depths: tuple[int, ...] = (3, 3, 3, 12, 3)
    enc_channels: tuple[int, ...] = (48, 96, 192, 384, 512)
    enc_num_head: tuple[int, ...] = (3, 6, 12, 24, 32)
    enc_patch_size: tuple[int, ...] = (1024,) * 5
    stride: tuple[int, ...] = (2, 2, 2, 2)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    order: tuple[str, ...] = ("z", "z-trans", "hilbert", "hilbert-trans")
    shuffle_orders: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        if isinstance(self.order, str):
            self.order = (self.order,)
        stages = len(self.enc_depths)
        if stages == 0:
            raise ValueError("Sonata needs at least one stage (enc_depths is empty)")
        for name in ("enc_channels", "enc_num_head", "enc_patch_size"):
            if len(getattr(self, name)) != stages:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, enc_depths has {stages}")
        if len(self.stride) != stages - 1:
            raise ValueError(f"stride needs {stages - 1} entries (one per pooling), got {len(self.stride)}")
        for c, h in zip(self.enc_channels, self.enc_num_head):
            if c % h:
                raise ValueError(f"enc_channels {c} is not divisible by its head count {h}")
        if any(s < 2 for s in self.stride) or any(p < 1 for p in self.enc_patch_size):
            raise ValueError("strides must be >= 2 and patch sizes >= 1")
        bad = [o for o in self.order if o not in SERIALIZATION_ORDERS]
        if bad or not self.order:
            raise ValueError(f"unknown serialization order(s) {bad}; expected a subset of {SERIALIZATION_ORDERS}")
        if self.in_channels != 6:
            raise ValueError("this Sonata takes 6 input channels (xyz + rgb, no normals)")
        if not self.grid_size > 0:
            raise ValueError(f"grid_size must be positive, got {self.grid_size}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "SonataConfig":
        """Released defaults overridden by ``d`` (the ``"sonata"`` object of config.json)."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        for key, value in _FIXED_UPSTREAM_KEYS.items():
            if key in d and d.pop(key) != value:
                raise ValueError(f"Sonata option {key}={value!r} is the only supported value")
        unknown = sorted(k for k in d if k not in known and k not in _IGNORED_UPSTREAM_KEYS)
        if unknown:
            raise ValueError(f"unknown Sonata config keys: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples become lists) that :meth:`from_dict` reads back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def out_channels(self) -> int:
        """Width of the per-point output: all stage widths concatenated (1232 when released)."""
        return sum(self.enc_channels)


class GSReasonerConfig:
    """The model's configuration, attribute access over the keys of config.json.

    `text_config()` and `vision_config()` build the transformers configs of the two reused parts;
    `sonata_config()` builds Sonata's. Validation happens at construction: a value this
    implementation does not support is a ValueError naming the key.
    """

    model_type = "llava_qwen"

    def __init__(self, **kwargs: Any):
        values = dict(DEFAULTS)
        values.update(kwargs)
        if "rope_theta" not in kwargs and isinstance(kwargs.get("rope_parameters"), dict):
            values["rope_theta"] = kwargs["rope_parameters"].get("rope_theta", DEFAULTS["rope_theta"])
        self.__dict__["_values"] = values
        self._validate()

    # ---- attribute access ----------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[name] = value

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def __repr__(self) -> str:
        return f"GSReasonerConfig({json.dumps(self.to_dict(), sort_keys=True)})"

    # ---- derived values ------------------------------------------------------------

    @property
    def n_points(self) -> int:
        """Samples per patch, parsed from world_position_embedding_type ("sonata_sample_64")."""
        return int(self.world_position_embedding_type.rsplit("_", 1)[-1])

    def _validate(self) -> None:
        v = self._values
        if v.get("model_type") not in ("llava_qwen", None):
            raise ValueError(f"config.json: model_type must be 'llava_qwen', got {v.get('model_type')!r}")
        expected = {"mm_projector_type": "mlp2x_gelu", "mm_spatial_pool_mode": "bilinear",
                    "mm_newline_position": "grid", "mm_vision_select_layer": -2}
        for key, want in expected.items():
            if v[key] != want:
                raise ValueError(f"config.json: {key}={v[key]!r} is not supported (GS-Reasoner uses {want!r})")
        match = re.fullmatch(r"sonata_sample_(\d+)", str(v["world_position_embedding_type"]))
        if not match:
            raise ValueError("config.json: world_position_embedding_type must look like 'sonata_sample_64', "
                             f"got {v['world_position_embedding_type']!r}")
        n = int(match.group(1))
        if n < 4 or math.isqrt(n) ** 2 != n:
            raise ValueError(f"config.json: world_position_embedding_type asks for {n} samples per patch; "
                             "it must be a square of at least 4 (an n x n grid)")
        if int(v["mm_spatial_pool_stride"]) < 1:
            raise ValueError("config.json: mm_spatial_pool_stride must be >= 1")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size", "mm_hidden_size"):
            if not isinstance(v[key], int) or v[key] <= 0:
                raise ValueError(f"config.json: {key} must be a positive integer, got {v[key]!r}")
        if v["hidden_size"] < 6:
            raise ValueError("config.json: hidden_size must be at least 6 (the 3D sine encoding needs 2 per axis)")
        for key in ("sonata", "vision_config"):
            if v.get(key) is not None and not isinstance(v[key], dict):
                raise ValueError(f"config.json: {key!r} must be an object, got {type(v[key]).__name__}")

    # ---- the parts' configs --------------------------------------------------------

    def text_config(self):
        """transformers Qwen2Config of the language model (untied head, no rope scaling, as the
        authors' loader forces)."""
        from transformers import Qwen2Config

        v = self._values
        return Qwen2Config(
            vocab_size=v["vocab_size"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
            num_hidden_layers=v["num_hidden_layers"], num_attention_heads=v["num_attention_heads"],
            num_key_value_heads=v["num_key_value_heads"], hidden_act=v["hidden_act"],
            max_position_embeddings=v["max_position_embeddings"], rms_norm_eps=v["rms_norm_eps"],
            rope_parameters={"rope_type": "default", "rope_theta": float(v["rope_theta"])},
            tie_word_embeddings=False, use_sliding_window=bool(v["use_sliding_window"]),
            sliding_window=v["sliding_window"], max_window_layers=v["max_window_layers"],
            attention_dropout=v["attention_dropout"], initializer_range=v["initializer_range"],
            bos_token_id=v["bos_token_id"],
            eos_token_id=v["eos_token_id"],
        )

    def siglip_geometry(self, vision_tower: str | os.PathLike | None = None) -> dict:
        """The full (untruncated) SigLIP architecture: from a SigLIP folder when given, else the
        embedded "vision_config", else the known tower named by mm_vision_tower."""
        if vision_tower is not None:
            geometry = read_siglip_folder_config(vision_tower)
        elif self.get("vision_config"):
            geometry = {**SIGLIP_SO400M_PATCH14_384, **self.vision_config_dict}
        elif self.mm_vision_tower in KNOWN_VISION_TOWERS:
            geometry = dict(KNOWN_VISION_TOWERS[self.mm_vision_tower])
        else:
            raise ValueError(f"unknown vision tower {self.mm_vision_tower!r}: pass vision_tower=DIR "
                             "(a SigLIP folder with config.json)")
        if geometry["hidden_size"] != self.mm_hidden_size:
            raise ValueError(f"SigLIP hidden_size {geometry['hidden_size']} != config mm_hidden_size "
                             f"{self.mm_hidden_size}")
        if geometry["num_hidden_layers"] < 2:
            raise ValueError("SigLIP needs at least 2 layers (the authors drop the last one)")
        return {k: geometry[k] for k in SIGLIP_KEYS}

    @property
    def vision_config_dict(self) -> dict:
        return dict(self._values.get("vision_config") or {})

    def vision_config(self, vision_tower: str | os.PathLike | None = None):
        """transformers SiglipVisionConfig of the truncated tower the model runs: the last encoder
        layer dropped (mm_vision_select_layer=-2) and no pooling head."""
        from transformers import SiglipVisionConfig

        geometry = self.siglip_geometry(vision_tower)
        geometry["num_hidden_layers"] -= 1
        return SiglipVisionConfig(**geometry, vision_use_head=False)

    def sonata_config(self) -> SonataConfig:
        """Sonata's config: the release's class defaults overridden by the optional "sonata" object."""
        return SonataConfig.from_dict(dict(self._values.get("sonata") or {}))

    # ---- IO --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict) -> "GSReasonerConfig":
        if not isinstance(values, dict):
            raise ValueError(f"config must be a JSON object, got {type(values).__name__}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GSReasonerConfig":
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(values)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "GSReasonerConfig":
        """Read `config.json` from a checkpoint folder (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"{path}: no config.json")
        return cls.from_json_file(file)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self._values))  # a deep copy that is JSON-clean

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        file = folder / "config.json"
        file.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return file


def read_siglip_folder_config(folder: str | os.PathLike) -> dict:
    """SigLIP geometry from a transformers SigLIP folder (SiglipModel or SiglipVisionModel config)."""
    file = Path(folder) / "config.json"
    if not file.is_file():
        raise ValueError(f"vision tower {folder}: no config.json")
    raw = json.loads(file.read_text())
    if raw.get("model_type") == "siglip" or "vision_config" in raw:
        raw = raw.get("vision_config") or {}
    elif raw.get("model_type") not in ("siglip_vision_model", None):
        raise ValueError(f"vision tower {folder}: model_type {raw.get('model_type')!r} is not SigLIP")
    # Keys a SigLIP config.json may omit take transformers' SiglipVisionConfig defaults.
    from transformers import SiglipVisionConfig

    defaults = SiglipVisionConfig().to_dict()
    return {k: raw.get(k, defaults[k]) for k in SIGLIP_KEYS}
