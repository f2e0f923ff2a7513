"""Issue 31: multi-GPU settings that would be silently wrong are refused when the config is read, before
anything trains: FSDP (on a CPU it is not even used), DeepSpeed ZeRO stage 3. (torchrun's continual
stages: tests/test_torchrun.py.)"""

from __future__ import annotations

import pytest

from badit.experiments.config import ConfigError, from_dict


@pytest.mark.parametrize("fsdp", ["full_shard", "shard_grad_op auto_wrap"])
def test_fsdp_is_refused_at_the_config_check_not_after_training(fsdp, monkeypatch):
    # issue 31: training.fsdp=full_shard trained as DDP on CPU (config.yaml said full_shard); FSDP1 turned
    # BADIT into svd-moe and LoRA crashed after all the training
    with pytest.raises(
        ConfigError, match=r"FSDP \(training.fsdp, or accelerate launch --use_fsdp\) is not supported"
    ):
        from_dict({"data": {"path": "/tmp"}, "training": {"fsdp": fsdp}})
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="is not supported: it shards the adapter's parameters"):
        from_dict({"data": {"path": "/tmp"}})


def test_zero_stage_3_is_refused_at_the_config_check(tmp_path):
    # issue 31: ZeRO-3 + BADIT failed at the first regroup on every rank; ZeRO-3 + LoRA saved lora_B of shape (0,)
    import json

    path = tmp_path / "ds3.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}))
    with pytest.raises(ConfigError, match="ZeRO stage 3 shards the adapter's parameters"):
        from_dict({"data": {"path": "/tmp"}, "training": {"deepspeed": str(path)}})
