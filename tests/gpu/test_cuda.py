"""What only a GPU runs (SPEC §12): bf16 forward and backward on CUDA against fp32 on the CPU,
SDPA's flash kernel on the masks the phases send, NCCL on one rank, pinned host batches. Run by
``make test-gpu`` (``pytest -m gpu``); skipped with the reason wherever no CUDA GPU is visible."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from orchestrator.config.model import get_model
from orchestrator.engine.launch.ports import free_port
from orchestrator.model.attention import AttentionMasks, visible_keys
from orchestrator.model.gpt import GPT
from orchestrator.model.params import init_parameters, param_shards

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"no CUDA GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda}): run make test-gpu on a GPU")]


def tiny(preset: str = "tiny") -> GPT:
    config = dataclasses.replace(get_model(preset), dropout=0.0)
    model = GPT(config)
    init_parameters(param_shards(model), config=config, seed=5)
    return model


def loss_and_grads(model: GPT, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(ids).logits
    loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return logits.detach().float().cpu(), loss.detach().float().cpu(), \
        {name: p.grad.float().cpu() for name, p in model.named_parameters()}


def test_bf16_forward_and_backward_on_cuda_match_fp32_on_the_cpu_within_bf16_rounding():
    reference = tiny()
    ids = torch.randint(1, reference.config.vocab, (4, 64), generator=torch.Generator().manual_seed(0))
    cuda = tiny().to("cuda", torch.bfloat16)
    cuda.load_state_dict({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()})
    logits32, loss32, grads32 = loss_and_grads(reference, ids)
    logits16, loss16, grads16 = loss_and_grads(cuda, ids.cuda())
    assert cuda.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    assert torch.allclose(logits16, logits32, atol=0.05, rtol=0.05)        # bf16 keeps 8 bits of mantissa
    assert abs(loss16 - loss32) / loss32 < 1e-2
    for name, grad in grads32.items():
        cosine = F.cosine_similarity(grads16[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))


@pytest.mark.parametrize("padding", ["none", "right"])
def test_unpadded_and_right_padded_batches_run_on_the_flash_kernel(padding):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny().to("cuda", torch.bfloat16).eval()
    ids = torch.randint(1, model.config.vocab, (3, 64), device="cuda")
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 40:] = 0
        mask[2, 10:] = 0
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):      # raises if flash cannot run
        out = model(ids, attention_mask=mask).logits
    assert torch.isfinite(out).all()


def test_the_boolean_mask_of_the_path_before_could_not_use_the_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = k = v = torch.randn(2, 4, 64, 16, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(2, 64, dtype=torch.long, device="cuda")
    mask[1, 40:] = 0
    boolean, _ = visible_keys(q_len=64, past=0, attention_mask=mask, window=None, device=q.device)
    masks = AttentionMasks.build(q_len=64, past=0, attention_mask=mask, window=None, device=q.device, dtype=q.dtype)
    assert masks.dense is None
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        with pytest.raises(RuntimeError):
            F.scaled_dot_product_attention(q, k, v, attn_mask=boolean)


def test_a_left_padded_batch_runs_its_additive_mask_on_the_memory_efficient_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny("tiny-local").to("cuda", torch.bfloat16).eval()
    ids = torch.randint(1, model.config.vocab, (2, 48), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :12] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        out = model(ids, attention_mask=mask, position_ids=positions).logits
    assert torch.isfinite(out).all()


def test_one_nccl_rank_all_reduces_and_consolidates_over_its_gloo_host_group(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("nccl_worker.py")), str(free_port())],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "nccl ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_host_batches_bound_for_the_gpu_are_pinned_and_arrive_whole():
    from orchestrator.engine.transfer import to_device

    batch = {"sequences": torch.arange(12).view(3, 4), "prompt_len": 2}
    moved = to_device(batch, torch.device("cuda", 0))
    assert moved["sequences"].device.type == "cuda" and moved["prompt_len"] == 2
    assert torch.equal(moved["sequences"].cpu(), batch["sequences"])


def test_the_rlhf_math_runs_on_the_gpu_without_leaving_it():
    from orchestrator.phases import rl_math

    mask = torch.ones(4, 6, device="cuda")
    mask[2, 3:] = 0
    score, logprobs, ref = torch.randn(4, device="cuda"), torch.randn(4, 6, device="cuda"), torch.randn(4, 6, device="cuda")
    rewards, kl = rl_math.token_rewards(score, logprobs, ref, mask, kl_coef=0.1)
    assert rewards.device.type == kl.device.type == "cuda"
    assert torch.allclose(rewards[2, 2].cpu(), (-0.1 * (logprobs[2, 2] - ref[2, 2]) + score[2]).cpu())
