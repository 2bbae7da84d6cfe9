"""Both training stages end to end on CPU with a tiny model and a synthetic dataset."""
import json

import numpy as np
import pytest
import torch

from gs_reasoner_ros.training import trainer as T


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gs_reasoner_ros.model.tiny import build_tiny_checkpoint
    from gs_reasoner_ros.training.synthetic_data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("train")
    ckpt = build_tiny_checkpoint(root / "init", seed=0)
    data = write_synthetic_dataset(root / "data", n_scenes=1, n_frames=2)
    one = [s for s in json.loads(data["grounding"].read_text()) if s["metadata"]["dataset"] == "scanrefer"][:1]
    (root / "one.json").write_text(json.dumps(one))
    return root, ckpt, data


def _weights(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def test_cosine_schedule_hand_values():
    assert T.cosine_with_warmup(0, 100, 3) == pytest.approx(1 / 3)
    assert T.cosine_with_warmup(2, 100, 3) == pytest.approx(1.0)
    assert T.cosine_with_warmup(3, 100, 3) == pytest.approx(1.0)
    assert T.cosine_with_warmup(3 + 97 // 2, 100, 3) == pytest.approx(0.5 * (1 + np.cos(np.pi * 48 / 97)))
    assert T.cosine_with_warmup(99, 100, 0) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.99)))


def test_pretrain_loss_falls_siglip_frozen_checkpoint_reloads(setup):
    from gs_reasoner_ros.model import GSReasonerForCausalLM

    root, ckpt, _ = setup
    cfg = T.TrainConfig(stage="pretrain", checkpoint=str(ckpt), data=str(root / "one.json"), data_root=str(root / "data"),
                        output_dir=str(root / "pre"), lr=3e-3, global_batch=1, frames=(1, 1), max_steps=5,
                        warmup_ratio=0.0, augment=False, device="cpu", deterministic_geometry=True)
    logs = []
    result = T.train(cfg, log=logs.append)
    assert cfg.resolved().dual_path_lr == 1e-4  # the stage default when not given
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses
    before, after = _weights(ckpt), _weights(root / "pre")
    assert before.keys() == after.keys()
    siglip = [k for k in before if k.startswith("model.vision_tower.")]
    assert siglip and all(torch.equal(before[k], after[k]) for k in siglip)
    for prefix in ("model.mm_projector.", "model.mm_spatial_projector.", "model.layers.", "model.spatial_encoder."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    reloaded = GSReasonerForCausalLM.from_pretrained(root / "pre")
    np.testing.assert_array_equal(reloaded.mm_projector[0].weight.numpy(), after["model.mm_projector.0.weight"].numpy())
    assert json.loads(logs[0])["event"] == "start" and json.loads(logs[-1])["event"] == "done"


@pytest.fixture(scope="module")
def finetuned(setup):
    """A LoRA fine-tune of the tiny model, saved in the official layout."""
    root, ckpt, data = setup
    cfg = T.TrainConfig(stage="finetune", checkpoint=str(ckpt), data=str(data["finetune"]), data_root=str(root / "data"),
                        output_dir=str(root / "fine"), lr=1e-3, global_batch=1, frames=(1, 1), max_steps=2,
                        lora=True, lora_r=4, lora_alpha=8, device="cpu")
    return T.train(cfg, log=lambda _: None), root / "fine"


def test_finetune_with_lora_merges_adapters_and_loads_in_the_reasoner(setup, finetuned):
    from gs_reasoner_ros.reasoner import Reasoner
    from gs_reasoner_ros.scene import Scene

    root, ckpt, data = setup
    result, fine = finetuned
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    before, after = _weights(ckpt), _weights(fine)
    assert before.keys() == after.keys()  # adapters merged: no lora_ keys, same layout
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.vision_tower."))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q], after[q])  # B @ A folded in
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])  # frozen under LoRA
    reasoner = Reasoner.load(str(fine))
    scene = Scene.load(root / "data" / "synthetic" / "scene0000")
    answer = reasoner.answer(scene, "the chair", task="ground", max_new_tokens=3)
    assert isinstance(answer.text, str)


def test_finetuned_checkpoint_runs_in_gs_reasoner_infer(setup, finetuned, capsys):
    from gs_reasoner_ros.tools.cli import main

    root, _, _ = setup
    scene = root / "data" / "synthetic" / "scene0000"
    assert main(["infer", "--checkpoint", str(finetuned[1]), "--scene", str(scene), "--question", "the chair",
                 "--task", "ground", "--max-new-tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"answer", "text", "objects", "timings"}


def test_finetuned_checkpoint_configures_the_node(finetuned):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from gs_reasoner_ros.ros.node import ReasonerNode

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        node = ReasonerNode(context=ctx, parameter_overrides=[Parameter("checkpoint", value=str(finetuned[1]))])
        try:
            assert node.state == "active"
            assert node.reasoner is not None and node.reasoner.untrained is False
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_merged_lora_state_equals_peft_merge():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=40))

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.language_model = get_peft_model(lm, LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "down_proj"]))

    holder = Holder()
    for name, p in holder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # B starts at zero; make the merge visible
    merged = T.merged_lora_state(holder.state_dict(), {"default": 6 / 2})
    reference = holder.language_model.merge_and_unload().state_dict()
    assert set(merged) == {f"language_model.{k}" for k in reference}
    for key, value in reference.items():
        torch.testing.assert_close(merged[f"language_model.{key}"], value)


def test_parameter_groups_and_trainable_parts(setup):
    root, ckpt, _ = setup
    from gs_reasoner_ros.model import GSReasonerForCausalLM

    model = GSReasonerForCausalLM.from_pretrained(ckpt)
    T.set_trainable(model, lora=False)
    groups = {g["name"]: g for g in T.parameter_groups(model, 1e-5, 1e-4)}
    dual_ids = {id(p) for p in groups["dual_path"]["params"]}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        assert p.requires_grad == (top != "vision_tower"), name
        assert (id(p) in dual_ids) == (top in T.DUAL_PATH_MODULES), name
    assert groups["dual_path"]["lr"] == 1e-4 and groups["base"]["lr"] == 1e-5


def test_config_errors(setup, tmp_path):
    root, ckpt, data = setup
    base = dict(checkpoint=str(ckpt), data=str(data["finetune"]), data_root=str(root / "data"), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="stage"):
        T.TrainConfig(stage="midtrain", **base).resolved()
    with pytest.raises(ValueError, match="frames"):
        T.TrainConfig(stage="finetune", frames=(8, 4), **base).resolved()
    with pytest.raises(ValueError, match="checkpoint folder"):
        T.TrainConfig(stage="finetune", **dict(base, checkpoint=str(tmp_path / "none"))).resolved()


def test_nccl_multicast_stays_off():
    env = T.apply_nccl_safe_env({"NCCL_NVLS_ENABLE": "1"})
    assert env == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def test_torchrun_fsdp_two_processes_on_cpu(setup):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, ckpt, data = setup
    repo = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", CHECKPOINT=str(ckpt),
               DATA=str(data["finetune"]), DATA_ROOT=str(root / "data"), OUTPUT=str(root / "fsdp"), NPROC="2",
               OMP_NUM_THREADS="1")
    subprocess.run(["bash", str(repo / "scripts" / "train_finetune.sh"), "--max-steps", "2", "--global-batch", "2",
                    "--frames", "1", "--device", "cpu"], env=env, check=True, timeout=600)
    before, after = _weights(ckpt), _weights(root / "fsdp")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.vision_tower."))
