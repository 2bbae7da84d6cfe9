"""The release's checkpoint layout (`ymccccc/GS-Reasoner`): load, save and the key map.

A checkpoint folder holds config.json and the weights as model.safetensors or as shards listed in
model.safetensors.index.json, under the ORIGINAL LLaVA key names (model.mm_projector.*, ...: the
key map below).
Pickled weights (.bin/.pt/.pth) are read only through torch.load(weights_only=True). The truncated
SigLIP may be absent from the checkpoint; then it comes from a SigLIP folder (vision_tower=DIR).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from gs_reasoner_ros.model.configuration import KNOWN_VISION_TOWERS, GSReasonerConfig

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."

# (release key prefix, our module's state_dict prefix). "model.image_newline" is a whole key.
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    (VISION_PREFIX, "vision_tower."),
    ("model.embed_tokens.", "language_model.model.embed_tokens."),
    ("model.layers.", "language_model.model.layers."),
    ("model.norm.", "language_model.model.norm."),
    ("lm_head.", "language_model.lm_head."),
    ("model.mm_projector.", "mm_projector."),
    ("model.image_newline", "image_newline"),
    ("model.spatial_encoder.", "spatial_encoder."),
    ("model.pointnet_pooling.", "pointnet_pooling."),
    ("model.ada_crossattn.", "ada_crossattn."),
    ("model.mm_spatial_projector.", "mm_spatial_projector."),
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def to_module_key(key: str) -> str | None:
    """Release key -> our state_dict key, or None when the key belongs to no known module."""
    for release, ours in KEY_PREFIXES:
        if key == release if not release.endswith(".") else key.startswith(release):
            return ours + key[len(release):]
    return None


def to_release_key(key: str) -> str:
    """Our state_dict key -> the release's name for it."""
    for release, ours in KEY_PREFIXES:
        if key == ours if not ours.endswith(".") else key.startswith(ours):
            return release + key[len(ours):]
    raise ValueError(f"no release name for parameter {key!r}")


# ---- reading weight files -----------------------------------------------------------------


class WeightFiles:
    """The tensors of a checkpoint folder (or of one weight file), by key, read lazily."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.files = _weight_files(self.path)
        self.location: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        for file in self.files:
            for key, shape in self._scan(file):
                if key in self.location:
                    raise ValueError(f"{self.path}: key {key!r} appears in both {self.location[key].name} "
                                     f"and {file.name}")
                self.location[key] = file
                self.shapes[key] = shape

    def _scan(self, file: Path) -> Iterator[tuple[str, tuple[int, ...]]]:
        if file.suffix == ".safetensors":
            with _safetensors(file) as f:
                keys = [(key, tuple(f.get_slice(key).get_shape())) for key in f.keys()]
            yield from keys
        else:
            tensors = _load_pickle(file)
            self._pickled[file] = tensors
            for key, tensor in tensors.items():
                yield key, tuple(tensor.shape)

    def tensors(self, keys: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) for the wanted keys, one file open at a time."""
        for file in self.files:
            wanted = [k for k, f in self.location.items() if f == file and (keys is None or k in keys)]
            if file in self._pickled:
                yield from ((k, self._pickled[file][k]) for k in wanted)
                continue
            with _safetensors(file) as f:
                for key in wanted:
                    yield key, f.get_tensor(key)


@contextmanager
def _safetensors(file: Path):
    """safe_open, with safetensors' own errors (truncated or corrupt files) naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: not a readable safetensors file (truncated or corrupt?): {err}") from None
    with handle as f:
        yield f


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map")
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ValueError(f"{path}: shards listed in {index.name} are missing: {absent}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return pickles
    raise ValueError(f"{path}: no weights (model.safetensors, a sharded index, or .bin/.pt files)")


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError/RuntimeError/... for unsafe content
        raise ValueError(f"{file}: refusing to load: not loadable with torch.load(weights_only=True) "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         "convert the checkpoint to safetensors") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise ValueError(f"{file}: expected a mapping of names to tensors")
    return data


# ---- loading ----------------------------------------------------------------------------


@contextmanager
def _building(device, dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly on `device` in `dtype`, skipping random initialisation (every weight
    is loaded afterwards; missing ones are an error)."""
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _describe(keys: set[str], limit: int = 12) -> str:
    shown = sorted(keys)[:limit]
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def load_pretrained(cls, path, vision_tower=None, device="cpu", dtype=torch.float32, vision_dtype=None):
    """See GSReasonerForCausalLM.from_pretrained."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a folder")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    config = GSReasonerConfig.from_pretrained(path)
    weights = WeightFiles(path)
    embed = weights.shapes.get("model.embed_tokens.weight")
    if embed is not None:
        # The authors' loader overrides config.json's vocab_size (with 151653, the weights' row count).
        config.vocab_size = int(embed[0])
    has_vision = any(k.startswith(VISION_PREFIX) for k in weights.shapes)
    if not has_vision and vision_tower is None:
        raise ValueError(f"{path}: the checkpoint holds no vision tower weights ({VISION_PREFIX}*); "
                         "pass vision_tower=DIR, a SigLIP folder")
    with _building(device, dtype):
        model = cls(config, vision_tower=vision_tower)
    model.spatial_encoder.float()

    params = model.state_dict(keep_vars=True)
    expected = {to_release_key(k): k for k in params}
    from_folder = set() if has_vision else {k for k in expected if k.startswith(VISION_PREFIX)}
    unknown = set(weights.shapes) - set(expected)
    missing = set(expected) - set(weights.shapes) - from_folder
    if unknown or missing:
        parts = [f"{len(unknown)} unknown keys: {_describe(unknown)}" if unknown else "",
                 f"{len(missing)} missing keys: {_describe(missing)}" if missing else ""]
        raise ValueError(f"{path}: checkpoint does not match the model: " + "; ".join(p for p in parts if p))
    _copy_weights(params, weights.tensors(), expected, str(path))
    if from_folder:
        load_siglip_weights(model, vision_tower)
    model.set_vision_dtype(vision_dtype)
    model.eval().requires_grad_(False)
    return model


def _copy_weights(params: dict, tensors, expected: dict[str, str], where: str) -> None:
    with torch.no_grad():
        for key, tensor in tensors:
            target = params[expected[key]]
            if tuple(tensor.shape) != tuple(target.shape):
                raise ValueError(f"{where}: {key} has shape {tuple(tensor.shape)}, the model expects "
                                 f"{tuple(target.shape)} (config.json and weights disagree)")
            target.copy_(tensor)


def load_siglip_weights(model, folder: str | os.PathLike) -> None:
    """Fill the truncated vision tower from a transformers SigLIP folder (SiglipModel or
    SiglipVisionModel weights); the text tower, the head and the dropped last layer are ignored."""
    weights = WeightFiles(folder)
    params = model.vision_tower.state_dict(keep_vars=True)
    # SiglipModel folders prefix the tower with "vision_model."; flattened v5 SiglipVisionModel saves do not.
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in weights.shapes) else ""
    expected = {prefix + k: k for k in params}
    missing = set(expected) - set(weights.shapes)
    if missing:
        raise ValueError(f"vision tower {folder}: {len(missing)} missing keys: {_describe(missing)}")
    _copy_weights(params, weights.tensors(set(expected)), expected, str(folder))


# ---- saving -----------------------------------------------------------------------------


def release_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights under the release's key names, contiguous, on the CPU."""
    return {to_release_key(k): v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_pretrained(model, path, tokenizer=None, max_shard_size: int | None = None) -> Path:
    """Write config.json + model.safetensors (or shards of at most max_shard_size bytes with
    model.safetensors.index.json) + the tokenizer's files when given."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = GSReasonerConfig.from_dict(model.config.to_dict())
    known = KNOWN_VISION_TOWERS.get(config.mm_vision_tower)
    if not config.get("vision_config") and (known is None or {**known} != model.siglip_geometry):
        config.vision_config = dict(model.siglip_geometry)  # so the folder loads without vision_tower=DIR
    config.save_pretrained(path)
    state = release_state_dict(model)
    shards = _shards(state, max_shard_size)
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for n, shard in enumerate(shards, start=1):
            name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def _shards(state: dict[str, torch.Tensor], max_shard_size: int | None) -> list[dict[str, torch.Tensor]]:
    if max_shard_size is None:
        return [state]
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards
