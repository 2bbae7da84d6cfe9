"""Training samples in the GS-Reasoner-Data JSON schema, turned into model inputs.

A sample, as GS-Reasoner-Data writes it:

    {"id": ..., "video": "scannet/scene0000_00",          # GCoT: "data_source" + "scene_name"
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "<ground>" | text}],
     "metadata": {"dataset": "scanrefer" | ..., "question_type": ...,
                  "object": [{"object_name", "object_id": [...], "object_bbox": [[cx,cy,cz,dx,dy,dz], ...]}],
                  "data_augmentation": {...} (GCoT), "answers": [...] (ScanQA)}}

The scene is a folder in the processed-data layout under the data root, named by the sample's
video key. What `SampleBuilder` does per sample, following the authors' loader:
1. choose frames: np.linspace over the scene's frames, 16..48 at random (pretrain) or 32;
2. point map from the frames, augmented (grounding and GCoT samples only) together with the boxes;
3. non-GCoT questions get the direct-answer instruction; `<ground>` becomes
   `<think></think><answer>name count <bbox>(x1, y1, z1, x2, y2, z2)</bbox>...</answer>`
   (boxes shuffled within an object, 4 decimals, min/max corners); ScanQA/SQA3D/Scan2Cap answers
   are wrapped in `<think></think><answer>...</answer>`;
4. ChatML ids with one IMAGE_TOKEN_INDEX entry at `<image>`, labels = ids on the assistant
   turn's text and its closing <|im_end|>, -100 elsewhere.

Deviation from the authors, on purpose: their `preprocess_qwen` also trains on the assistant
header and on every "\\n", <|im_start|> and <|im_end|> token of the system and user turns; here
only what the model must generate is a label.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gs_reasoner_ros.reasoning import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, load_prompts
from gs_reasoner_ros.scene import Scene
from gs_reasoner_ros.training.augment import IDENTITY, PointAugmentation

IGNORE_INDEX = -100
GROUND_TOKEN = "<ground>"
GROUNDING_DATASETS = ("scanrefer", "multi3drefer", "sr3d", "nr3d", "locate3d_scannet")
WRAPPED_ANSWER_DATASETS = ("scanqa", "sqa3d", "scan2cap")
GCOT_DATASETS = ("vsibench_cot",)
KNOWN_DATASETS = GROUNDING_DATASETS + WRAPPED_ANSWER_DATASETS + GCOT_DATASETS
PRETRAIN_FRAMES = (16, 48)
FINETUNE_FRAMES = 32


# ---- reading samples -------------------------------------------------------------


def read_json_records(path: str | os.PathLike) -> list[dict]:
    """The objects of a JSON list, a single JSON object, or JSON Lines (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: neither a JSON list nor JSON Lines ({err})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError(f"{path}: expected a list of JSON objects")
    return data


def load_sample_file(path: str | os.PathLike) -> list[dict]:
    """Samples of one file (see read_json_records), each checked against the schema."""
    data = read_json_records(path)
    for k, sample in enumerate(data):
        check_sample(sample, where=f"{path}[{k}]")
    return data


def dataset_name(sample: dict) -> str:
    """metadata.dataset, lower-cased ("scanQA" in the release)."""
    return str(sample.get("metadata", {}).get("dataset", "")).lower()


def scene_key(sample: dict) -> str:
    """The scene folder of a sample: `video`, or `data_source/scene_name` for GCoT."""
    if dataset_name(sample) in GCOT_DATASETS and "scene_name" in sample:
        return f"{sample.get('data_source', '')}/{sample['scene_name']}".strip("/")
    return str(sample["video"])


def check_sample(sample: Any, where: str = "sample") -> None:
    """ValueError naming the problem when a sample does not follow the schema."""
    if not isinstance(sample, dict):
        raise ValueError(f"{where}: a sample must be a JSON object, got {type(sample).__name__}")
    where = f"{where} (id {sample.get('id')!r})"
    conv = sample.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise ValueError(f"{where}: 'conversations' must hold at least a human and a gpt turn")
    for turn in conv:
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: every turn needs 'from' (human|gpt) and a string 'value', got {turn!r}")
    if conv[0]["from"] != "human":
        raise ValueError(f"{where}: the first turn must be from 'human'")
    if "video" not in sample and "scene_name" not in sample:
        raise ValueError(f"{where}: needs 'video' (or 'data_source' + 'scene_name' for GCoT)")
    meta = sample.get("metadata", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: 'metadata' must be an object")
    name = dataset_name(sample)
    if name and name not in KNOWN_DATASETS:
        raise ValueError(f"{where}: unknown metadata.dataset {meta.get('dataset')!r}; known: {', '.join(KNOWN_DATASETS)}")
    if any(GROUND_TOKEN in t["value"] for t in conv) and not isinstance(meta.get("object"), list):
        raise ValueError(f"{where}: a '<ground>' sample needs metadata.object")
    for obj in meta.get("object", []) or []:
        boxes = np.asarray(obj.get("object_bbox", []), dtype=np.float64)
        if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 6 or not np.all(np.isfinite(boxes))):
            raise ValueError(f"{where}: object_bbox of {obj.get('object_name')!r} must be finite [cx,cy,cz,dx,dy,dz] rows")
        if "object_name" not in obj:
            raise ValueError(f"{where}: every metadata.object entry needs 'object_name'")
    if name in GCOT_DATASETS and "data_augmentation" in meta:
        PointAugmentation.from_config(meta["data_augmentation"])


# ---- target text -----------------------------------------------------------------


def format_box(box_min_max: Sequence[float]) -> str:
    """`(x1, y1, z1, x2, y2, z2)` with 4 decimals, the authors' convert_bbox_to_str."""
    values = [float(v) for v in box_min_max]
    if len(values) != 6:
        raise ValueError(f"a box needs 6 numbers, got {len(values)}")
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def grounding_text(objects: Sequence[dict], rng: np.random.Generator | None, with_names: bool = True) -> str:
    """The box part of a grounding answer from metadata objects (boxes as centre+size).

    `name count <bbox>...</bbox><bbox>...</bbox>` per object, joined by ", ", the boxes of one
    object in random order when `rng` is given. authors: an object without boxes makes the
    whole text the literal `<bbox></bbox>` (Multi3DRefer zero-target queries).
    """
    text = ""
    for k, obj in enumerate(objects):
        boxes = np.asarray(obj.get("object_bbox", []), dtype=np.float64).reshape(-1, 6)
        if len(boxes):
            mins, maxs = boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2
            strings = [format_box(np.concatenate([lo, hi])) for lo, hi in zip(mins, maxs)]
            if rng is not None:
                strings = [strings[i] for i in rng.permutation(len(strings))]
            if with_names:
                text += f"{obj['object_name']} {len(strings)} "
            text += "".join(f"<bbox>{s}</bbox>" for s in strings)
        else:
            text = "<bbox></bbox>"
        if k != len(objects) - 1:
            text += ", "
    return text


def augmented_objects(objects: Sequence[dict], aug: PointAugmentation) -> list[dict]:
    """Copies of metadata objects with their centre+size boxes moved by `aug`."""
    out = copy.deepcopy(list(objects))
    for obj in out:
        boxes = np.asarray(obj.get("object_bbox", []), dtype=np.float64).reshape(-1, 6)
        if len(boxes):
            obj["object_bbox"] = aug.apply_boxes_center_size(boxes).tolist()
    return out


def build_turns(sample: dict, objects: Sequence[dict] | None, rng: np.random.Generator | None) -> list[tuple[str, str]]:
    """(role, text) turns after the authors' rewriting: instruction prepended to non-GCoT
    questions, `<ground>` replaced, short answers wrapped in think/answer tags."""
    name = dataset_name(sample)
    turns = [("user" if t["from"] == "human" else "assistant", t["value"]) for t in sample["conversations"]]
    role, first = turns[0]
    if name not in GCOT_DATASETS:
        first = f"{IMAGE_TOKEN}\n{load_prompts()['direct_answer']}\n{first.replace(IMAGE_TOKEN, '')}"
    elif IMAGE_TOKEN not in first:
        first = f"{IMAGE_TOKEN}\n{first}"
    turns[0] = (role, first)
    if objects is not None and any(GROUND_TOKEN in text for _, text in turns):
        boxes = grounding_text(objects, rng, with_names=name != "scan2cap")
        fill = boxes if name == "scan2cap" else f"<think></think><answer>{boxes}</answer>"
        turns = [(r, t.replace(GROUND_TOKEN, fill)) for r, t in turns]
    if name in WRAPPED_ANSWER_DATASETS and len(turns) > 1:
        turns[1] = (turns[1][0], f"<think></think><answer>{turns[1][1]}</answer>")
    return turns


# ---- token ids -------------------------------------------------------------------


def encode_turns(tokenizer, turns: Sequence[tuple[str, str]], system: str | None = None) -> tuple[list[int], list[int]]:
    """ChatML ids and labels for a conversation.

    Each `<|im_start|>role\\n...<|im_end|>\\n` block is tokenized with the added tokens
    recognised; the single `<image>` becomes IMAGE_TOKEN_INDEX. Labels copy the ids of each
    assistant turn's content and its `<|im_end|>`, -100 elsewhere.
    """
    system = load_prompts()["system"] if system is None else system
    ids: list[int] = []
    labels: list[int] = []

    def add(text: str, train: bool) -> None:
        piece = _encode(tokenizer, text)
        ids.extend(piece)
        labels.extend(piece if train else [IGNORE_INDEX] * len(piece))

    add(f"<|im_start|>system\n{system}<|im_end|>\n", False)
    images = 0
    for role, text in turns:
        add(f"<|im_start|>{role}\n", False)
        if role == "assistant":
            add(text + "<|im_end|>", True)
            add("\n", False)
            continue
        parts = text.split(IMAGE_TOKEN)
        images += len(parts) - 1
        for k, part in enumerate(parts):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
                labels.append(IGNORE_INDEX)
            add(part, False)
        add("<|im_end|>\n", False)
    if images != 1:
        raise ValueError(f"a sample must hold exactly one {IMAGE_TOKEN} in its user turns, found {images}")
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError("the conversation has no assistant turn to learn from")
    return ids, labels


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


# ---- one training example ----------------------------------------------------------


@dataclass
class Example:
    """Everything one optimisation step needs for one sample (batch size 1, as the authors)."""

    id: Any
    input_ids: list[int]  # one IMAGE_TOKEN_INDEX entry
    labels: list[int]
    pixel_values: np.ndarray  # float32 (F, 3, S, S) in [-1, 1]
    world_coords: np.ndarray  # float32 (F, S, S, 3), augmented
    augmentation: PointAugmentation


class SampleBuilder:
    """Turns samples into Examples: frames, augmentation, prompt and labels.

    frames: an int (fixed count) or a (low, high) range drawn per sample, inclusive.
    Randomness comes from np.random.default_rng([seed, epoch, index]) so any process
    (DataLoader worker, distributed rank) rebuilds the same example.
    """

    def __init__(self, data_root: str | os.PathLike, tokenizer, frames: int | tuple[int, int] = FINETUNE_FRAMES,
                 augment: bool = True, crop: int = 384, seed: int = 0):
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():
            raise ValueError(f"data root {self.data_root} does not exist")
        if isinstance(frames, int):
            frames = (frames, frames)
        if not (1 <= frames[0] <= frames[1]):
            raise ValueError(f"frames must be a positive count or a (low, high) range, got {frames}")
        self.frames = (int(frames[0]), int(frames[1]))
        self.tokenizer = tokenizer
        self.augment = augment
        self.crop = crop
        self.seed = seed

    def rng(self, index: int, epoch: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def augmentation(self, sample: dict, rng: np.random.Generator) -> PointAugmentation:
        """The authors' rule: random for grounding sets, the stored config for GCoT, none for QA."""
        name = dataset_name(sample)
        if not self.augment:
            return IDENTITY
        if name in GCOT_DATASETS:
            conf = sample.get("metadata", {}).get("data_augmentation")
            return PointAugmentation.from_config(conf) if conf else IDENTITY
        if name in GROUNDING_DATASETS + ("scan2cap",):
            return PointAugmentation.sample(rng)
        return IDENTITY

    def text(self, sample: dict, rng: np.random.Generator, aug: PointAugmentation) -> tuple[list[int], list[int]]:
        """Prompt ids and labels, with the boxes in the augmented frame."""
        objects = sample.get("metadata", {}).get("object")
        objects = augmented_objects(objects, aug) if objects is not None else None
        return encode_turns(self.tokenizer, build_turns(sample, objects, rng))

    def build(self, sample: dict, index: int = 0, epoch: int = 0) -> Example:
        from gs_reasoner_ros.model.preprocess import preprocess_frames

        rng = self.rng(index, epoch)
        count = int(rng.integers(self.frames[0], self.frames[1] + 1))
        folder = self.data_root / scene_key(sample)
        if not folder.is_dir():
            raise ValueError(f"sample {sample.get('id')!r}: scene folder {folder} does not exist")
        scene = Scene.load_processed(folder, count=count)
        pixels, coords = preprocess_frames(scene, np.arange(len(scene)), crop=self.crop)
        aug = self.augmentation(sample, rng)
        coords = aug.apply_points(coords)
        ids, labels = self.text(sample, rng, aug)
        return Example(sample.get("id", index), ids, labels, pixels, coords, aug)


class TrainingDataset:
    """A torch-style map dataset over samples (len, getitem -> Example); `set_epoch` changes
    the random draws (frame counts, augmentation, box order) between epochs."""

    def __init__(self, samples: Sequence[dict], builder: SampleBuilder):
        if not samples:
            raise ValueError("the training set is empty")
        self.samples = list(samples)
        self.builder = builder
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Example:
        return self.builder.build(self.samples[index], index, self.epoch)
