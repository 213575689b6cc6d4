"""The RLHF math and the batch transfer never mix devices: run on ``meta`` tensors (a device that
is not the CPU) under a dispatch mode that refuses any op whose tensor arguments live on two
devices, so a CPU index into a GPU tensor (a host sync and a copy per call on CUDA) fails here."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from orchestrator.engine.transfer import needs_pinning, to_device
from orchestrator.phases import rl_math
from orchestrator.phases.ppo import response_logprobs


class OneDevicePerOp(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            raise AssertionError(f"{func} mixes devices {sorted(devices)}")
        return func(*args, **(kwargs or {}))


def on_meta(*shapes, dtype=torch.float32):
    return [torch.zeros(shape, dtype=dtype, device="meta") for shape in shapes]


def test_the_mode_catches_a_cpu_index_into_a_device_tensor():
    (rewards,) = on_meta((3, 5))
    with OneDevicePerOp(), pytest.raises(AssertionError, match="mixes devices"):
        rewards[torch.arange(3), torch.zeros(3, dtype=torch.long, device="meta")] += 1.0


def test_the_ppo_rewards_advantages_and_losses_stay_on_the_tensors_device():
    score, = on_meta((4,))
    logprobs, ref, mask, values, old, adv = on_meta(*[(4, 6)] * 6)
    with OneDevicePerOp():
        rewards, kl = rl_math.token_rewards(score, logprobs, ref, mask, kl_coef=0.1)
        advantages, returns = rl_math.gae(rewards, values, mask, gamma=1.0, lam=0.95)
        rl_math.masked_whiten(advantages, mask)
        rl_math.policy_loss(logprobs, old, adv, mask, clip_ratio=0.2)
        rl_math.value_loss(values, old, returns, mask, value_clip=0.2)
        rl_math.explained_variance(values, returns, mask)
    assert rewards.device.type == kl.device.type == advantages.device.type == "meta"


def test_response_logprobs_and_rankings_stay_on_the_tensors_device():
    (logits,) = on_meta((2, 9, 32))
    (sequences,) = on_meta((2, 9), dtype=torch.long)
    scores, valid = on_meta((2, 4)), on_meta((2, 4), dtype=torch.bool)
    with OneDevicePerOp():
        assert response_logprobs(logits, sequences, prompt_len=5).shape == (2, 4)
        preferred = rl_math.preference_matrix(scores[0], valid[0])
        rl_math.ranking_loss(scores[0], preferred)


def test_host_batches_are_pinned_only_for_a_gpu_and_ints_pass_through():
    batch = {"sequences": torch.ones(2, 3, dtype=torch.long), "prompt_len": 5}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["prompt_len"] == 5 and moved["sequences"] is batch["sequences"]
    assert needs_pinning(batch["sequences"], torch.device("cuda", 0))
    assert not needs_pinning(batch["sequences"], torch.device("cpu"))
    assert not needs_pinning(torch.ones(2, device="meta"), torch.device("cuda", 0))
