"""The authors' two training stages for GS-Reasoner.

One code path for one CPU process, one GPU and torchrun on many GPUs: under torchrun
(WORLD_SIZE > 1) every rank builds the same model, takes every world_size-th sample of the
epoch's seeded order, and the model is wrapped with PyTorch FSDP2 (`fully_shard`: one unit per
decoder layer and one for Sonata, kept in float32) or DDP. Batch size is 1 per step, as the
authors' geometry path requires; the global batch is reached by gradient accumulation.

Defaults (`STAGE_DEFAULTS`): frozen SigLIP; AdamW, lr 1e-5, 1e-4 for the dual-path modules in
pretraining; cosine schedule with 3% warm-up; weight decay 0; global batch 16 / 256; 16-48 random
frames (pretrain) or 32 (finetune); point augmentation on; loss on assistant tokens only.
With LoRA (peft) the LLM's linear layers get adapters and stay frozen otherwise; projectors,
dual-path modules and Sonata still train in full; adapters are merged before saving.
Checkpoints are written with the model's save_pretrained (release layout).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gs_reasoner_ros.model.configuration import IMAGE_TOKEN_INDEX
from gs_reasoner_ros.training.data import IGNORE_INDEX, PRETRAIN_FRAMES, FINETUNE_FRAMES

# NCCL's NVLink SHARP/multicast stays off (issue 8): set before any process group exists, and
# also when a launcher gave the process its own environment.
NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

FROZEN_MODULES = ("vision_tower",)
DUAL_PATH_MODULES = ("mm_spatial_projector", "world_position_embedding", "pointnet_pooling", "ada_crossattn")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

STAGE_DEFAULTS = {
    "pretrain": dict(lr=1e-5, dual_path_lr=1e-4, global_batch=16, frames=PRETRAIN_FRAMES, save_steps=500),
    "finetune": dict(lr=1e-5, dual_path_lr=1e-5, global_batch=256, frames=(FINETUNE_FRAMES, FINETUNE_FRAMES),
                     save_steps=50),
}


def apply_nccl_safe_env(env: dict | None = None) -> dict:
    """Force the multicast-off variables into `env` (os.environ by default); returns it."""
    env = os.environ if env is None else env
    env.update(NCCL_SAFE_ENV)
    return env


@dataclass
class TrainConfig:
    """Everything a run needs; None fields take the stage's default in `resolved()`."""

    stage: str
    checkpoint: str
    data: str
    data_root: str
    output_dir: str
    lr: float | None = None
    dual_path_lr: float | None = None
    global_batch: int | None = None
    frames: tuple[int, int] | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    augment: bool = True
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    distributed: str = "fsdp"  # used only under torchrun: fsdp | ddp
    device: str = "auto"
    vision_tower: str | None = None
    seed: int = 0
    save_steps: int | None = None
    log_every: int = 1
    deterministic_geometry: bool = False  # the authors train with random voxel points / orders
    workers: int = 0  # data-loading processes (0: build each example in the training loop)
    max_seconds: float | None = None  # stop (and save) once the steps took this long

    def resolved(self) -> "TrainConfig":
        if self.stage not in STAGE_DEFAULTS:
            raise ValueError(f"stage must be one of {', '.join(STAGE_DEFAULTS)}, got {self.stage!r}")
        out = copy.copy(self)
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        out.frames = tuple(int(f) for f in out.frames)
        checks = [(out.lr > 0, "lr must be positive"), (out.dual_path_lr > 0, "dual_path_lr must be positive"),
                  (out.global_batch >= 1, "global_batch must be at least 1"),
                  (len(out.frames) == 2 and 1 <= out.frames[0] <= out.frames[1], "frames must be 1 <= low <= high"),
                  (out.epochs > 0, "epochs must be positive"),
                  (out.max_steps is None or out.max_steps >= 1, "max_steps must be at least 1"),
                  (0 <= out.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
                  (out.distributed in ("fsdp", "ddp"), "distributed must be fsdp or ddp"),
                  (out.lora_r >= 1, "lora_r must be at least 1"),
                  (out.workers >= 0, "workers must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for name in ("checkpoint", "data_root"):
            if not Path(getattr(out, name)).is_dir():
                raise ValueError(f"{name} folder {getattr(out, name)!r} does not exist")
        if not Path(out.data).is_file():
            raise ValueError(f"data file {out.data!r} does not exist")
        return out


# ---- parameters ------------------------------------------------------------------


def parameter_groups(model: nn.Module, lr: float, dual_path_lr: float) -> list[dict]:
    """AdamW groups: dual-path modules at dual_path_lr, every other trainable parameter at lr."""
    dual, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (dual if any(m in name.split(".") for m in DUAL_PATH_MODULES) else rest).append(p)
    groups = [{"params": rest, "lr": lr, "name": "base"}, {"params": dual, "lr": dual_path_lr, "name": "dual_path"}]
    return [g for g in groups if g["params"]]


def set_trainable(model: nn.Module, lora: bool) -> None:
    """SigLIP frozen; everything else trains (the LLM only through its adapters with LoRA)."""
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        if top in FROZEN_MODULES:
            p.requires_grad_(False)
        elif top == "language_model":
            p.requires_grad_(not lora or "lora_" in name)
        else:
            p.requires_grad_(True)


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float) -> None:
    """Wrap the language model with peft LoRA adapters on its attention and MLP projections."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is in requirements/ml.txt
        raise RuntimeError("--lora needs peft (pip install peft; see requirements/ml.txt)") from err
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
                        bias="none", task_type="CAUSAL_LM")
    model.language_model = get_peft_model(model.language_model, config)


def _run_sonata_in_float32(model: nn.Module) -> None:
    """The authors run Sonata in float32 with autocast off; keep that under bf16 autocast."""
    encoder = model.spatial_encoder
    forward = encoder.forward

    def float32_forward(*args, **kwargs):
        with torch.autocast(device_type=model.device.type, enabled=False):
            return forward(*args, **kwargs)

    encoder.forward = float32_forward


class TrainingForward(nn.Module):
    """Loss of one example: visual tokens spliced in at IMAGE_TOKEN_INDEX, next-token cross
    entropy on the labelled (assistant) positions. A module so that DDP/FSDP wrap one forward."""

    def __init__(self, model: nn.Module, deterministic_geometry: bool = False, bf16_coords: bool = False):
        super().__init__()
        self.model = model
        self.deterministic_geometry = deterministic_geometry
        self.bf16_coords = bf16_coords

    def forward(self, pixel_values, world_coords, input_ids: list[int], labels: list[int], generator=None):
        if self.bf16_coords:
            # authors: the point map reaches the model in bf16 (about 3 cm steps at 4-8 m)
            world_coords = world_coords.to(torch.bfloat16).float()
        visual = self.model.encode_visual(pixel_values, world_coords, deterministic=self.deterministic_geometry,
                                          generator=generator)
        embeds = self.model.embed_prompt(input_ids, visual)
        at = input_ids.index(IMAGE_TOKEN_INDEX)
        full = labels[:at] + [IGNORE_INDEX] * visual.shape[0] + labels[at + 1:]
        target = torch.tensor(full, dtype=torch.long, device=embeds.device)
        out = self.model.language_model(inputs_embeds=embeds[None], labels=target[None], use_cache=False)
        return out.loss


# ---- distributed -----------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """torch.distributed from torchrun's environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    apply_nccl_safe_env()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend)
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard_fsdp(wrapper: TrainingForward, bf16: bool) -> None:
    """FSDP2: one unit per decoder layer, one for Sonata (float32 compute), the rest at the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    compute = torch.bfloat16 if bf16 else torch.float32
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    lm = wrapper.model.language_model
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    for layer in base.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(wrapper.model.spatial_encoder, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32))
    # FSDP cannot shard 0-d tensors (the release's unused pointnet_pooling.logit_scale): replicate them.
    scalars = {p for p in wrapper.parameters() if p.ndim == 0}
    fully_shard(wrapper, mp_policy=policy, ignored_params=scalars or None)


def full_state_dict(module: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The unsharded state dict (on CPU at rank 0 for FSDP; every rank must call this)."""
    if not sharded:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def merged_lora_state(state: dict[str, torch.Tensor], lora_scale: dict[str, float]) -> dict[str, torch.Tensor]:
    """Release-ready keys from a state dict of a model whose language_model is a peft model:
    W + scale * B @ A folded into every adapted weight, adapter tensors dropped."""
    prefix = "language_model.base_model.model."
    out = {}
    for key, value in state.items():
        if "lora_" in key:
            continue
        name = "language_model." + key[len(prefix):] if key.startswith(prefix) else key
        name = name.replace(".base_layer.", ".")
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            a, b = state[f"{stem}.lora_A.default.weight"], state[f"{stem}.lora_B.default.weight"]
            value = (value.float() + lora_scale["default"] * (b.float() @ a.float())).to(value.dtype)
        out[name] = value
    return out


class _SavedModel:
    """What save_pretrained reads from a model (config, SigLIP geometry, state_dict), for state
    dicts gathered from shards or merged from adapters."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self.config, self.siglip_geometry, self._state = model.config, model.siglip_geometry, state

    def state_dict(self):
        return self._state


def save_checkpoint(wrapper: nn.Module, model: nn.Module, cfg: TrainConfig, dist: Dist, tokenizer, path: Path,
                    sharded: bool) -> Path | None:
    """Write a release-layout checkpoint (rank 0); LoRA adapters merged into the weights."""
    if isinstance(wrapper, nn.parallel.DistributedDataParallel):
        wrapper = wrapper.module
    state = full_state_dict(wrapper, sharded)
    if not dist.main:
        return None
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if cfg.lora:
        state = merged_lora_state(state, {"default": cfg.lora_alpha / cfg.lora_r})
    from gs_reasoner_ros.model.checkpoint import save_pretrained

    saved = save_pretrained(_SavedModel(model, state), path, tokenizer=tokenizer)
    (Path(path) / "training_args.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    return saved


# ---- the loop ----------------------------------------------------------------------


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # per optimizer step (mean over accumulation)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    output_dir: str = ""
    peak_memory_gb: float | None = None


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def load_model(cfg: TrainConfig, device: torch.device):
    """Checkpoint -> trainable model (float32 master weights) and its tokenizer."""
    from gs_reasoner_ros.model import GSReasonerForCausalLM
    from gs_reasoner_ros.model.tokenizer import load_tokenizer

    model = GSReasonerForCausalLM.from_pretrained(cfg.checkpoint, vision_tower=cfg.vision_tower, device=device,
                                                  dtype=torch.float32)
    tokenizer = load_tokenizer(cfg.checkpoint)
    if cfg.lora:
        add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    set_trainable(model, cfg.lora)
    model.train()
    model.vision_tower.eval()  # frozen: no dropout
    if cfg.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.bf16:
        _run_sonata_in_float32(model)
    return model, tokenizer


def train(cfg: TrainConfig, log=print) -> TrainResult:
    """Run one stage; returns per-step losses and where the checkpoint went."""
    from gs_reasoner_ros.training.data import SampleBuilder, TrainingDataset
    from gs_reasoner_ros.training.mixture import load_training_samples

    cfg = cfg.resolved()
    apply_nccl_safe_env()
    device = _device(cfg.device)
    dist = init_distributed(device.type)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg, device)
    wrapper = TrainingForward(model, cfg.deterministic_geometry, bf16_coords=cfg.bf16)
    sharded = dist.world > 1 and cfg.distributed == "fsdp"
    if cfg.lora and sharded:
        raise ValueError("--lora with FSDP is not supported; use --distributed ddp or one process")
    if sharded:
        shard_fsdp(wrapper, cfg.bf16)
    elif dist.world > 1:
        wrapper = nn.parallel.DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(parameter_groups(wrapper, cfg.lr, cfg.dual_path_lr), betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    samples = load_training_samples(cfg.data, seed=cfg.seed)
    builder = SampleBuilder(cfg.data_root, tokenizer, frames=cfg.frames, augment=cfg.augment,
                            crop=model.image_size, seed=cfg.seed)
    dataset = TrainingDataset(samples, builder)
    accum = max(1, cfg.global_batch // dist.world)
    per_epoch = max(1, len(dataset) // (accum * dist.world))
    total = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    warmup = math.ceil(cfg.warmup_ratio * total)
    output = Path(cfg.output_dir)
    if dist.main:
        output.mkdir(parents=True, exist_ok=True)
        log(json.dumps({"event": "start", "stage": cfg.stage, "samples": len(dataset), "steps": total,
                        "accumulation": accum, "world_size": dist.world, "warmup_steps": warmup,
                        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                        "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad)}))
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed + dist.rank)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = TrainResult(output_dir=str(output))
    examples = iter(planned_examples(dataset, _sample_plan(len(dataset), total * accum, cfg.seed, dist), cfg.workers))
    start = time.perf_counter()
    done = total
    for step in range(total):
        if cfg.max_seconds and step and time.perf_counter() - start > cfg.max_seconds:
            done = step  # out of time: keep what was learnt, the schedule had not ended
            if dist.main:
                log(json.dumps({"event": "time_limit", "steps": step, "planned": total}))
            break
        # Under a time limit the schedule follows whichever is further along, steps or time,
        # so the learning rate has decayed when the time runs out.
        at = max(step, int(total * (time.perf_counter() - start) / cfg.max_seconds)) if cfg.max_seconds else step
        scale = cosine_with_warmup(min(at, total - 1), total, warmup)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * scale
        step_loss, t0 = 0.0, time.perf_counter()
        for _ in range(accum):
            example = next(examples)
            pixel_values = torch.from_numpy(example.pixel_values).to(device)
            world_coords = torch.from_numpy(example.world_coords).to(device)
            with autocast:
                loss = wrapper(pixel_values, world_coords, example.input_ids, example.labels, generator=generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: loss is {loss.item()} on sample {example.id!r}")
            (loss / accum).backward()
            step_loss += loss.item() / accum
        params = [p for p in wrapper.parameters() if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)) if params else 0.0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = _mean_over_ranks(step_loss, dist, device)
        result.losses.append(step_loss)
        result.samples += accum * dist.world
        if dist.main and (step % cfg.log_every == 0 or step == total - 1):
            dt = time.perf_counter() - t0
            record = {"event": "step", "step": step + 1, "loss": round(step_loss, 5), "lr": optimizer.param_groups[0]["lr"],
                      "grad_norm": round(grad_norm, 4), "step_s": round(dt, 3),
                      "samples_per_s": round(accum * dist.world / dt, 3)}
            if device.type == "cuda":
                record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
            log(json.dumps(record))
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total:
            save_checkpoint(wrapper, model, cfg, dist, tokenizer, output / f"checkpoint-{step + 1}", sharded)
    result.steps, result.seconds = done, time.perf_counter() - start
    if device.type == "cuda":
        result.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2 ** 30
    save_checkpoint(wrapper, model, cfg, dist, tokenizer, output, sharded)
    if dist.main:
        log(json.dumps({"event": "done", "steps": done, "seconds": round(result.seconds, 2),
                        "samples_per_s": round(result.samples / max(result.seconds, 1e-9), 3),
                        "final_loss": round(result.losses[-1], 5), "checkpoint": str(output),
                        "peak_memory_gb": result.peak_memory_gb}))
    return result


def _sample_plan(n: int, count: int, seed: int, dist: Dist) -> list[tuple[int, int]]:
    """(sample index, epoch) of this rank's next `count` examples, epoch after epoch."""
    plan: list[tuple[int, int]] = []
    epoch = 0
    while len(plan) < count:
        plan += [(int(i), epoch) for i in _epoch_order(n, seed, epoch, dist)]
        epoch += 1
    return plan[:count]


class _Planned:
    """The examples of a plan, by position (a map-style dataset for torch's DataLoader)."""

    def __init__(self, dataset, plan: list[tuple[int, int]]):
        self.dataset, self.plan = dataset, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int):
        index, epoch = self.plan[k]
        return self.dataset.builder.build(self.dataset.samples[index], index, epoch)


def _as_is(example):
    return example


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def planned_examples(dataset, plan: list[tuple[int, int]], workers: int = 0):
    """The plan's examples in order; with workers > 0 built ahead by that many processes (the
    same examples: every draw is seeded by sample, epoch and index)."""
    planned = _Planned(dataset, plan)
    if workers <= 0:
        return (planned[k] for k in range(len(planned)))
    from torch.utils.data import DataLoader

    return DataLoader(planned, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
                      worker_init_fn=_one_thread, prefetch_factor=4)


def _epoch_order(n: int, seed: int, epoch: int, dist: Dist) -> np.ndarray:
    """This rank's share of a seeded permutation of the samples (every world-th)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    mine = order[dist.rank::dist.world]
    return mine if len(mine) else order[:1]


def _mean_over_ranks(value: float, dist: Dist, device: torch.device) -> float:
    if dist.world == 1:
        return value
    import torch.distributed as tdist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return float(t.item() / dist.world)
