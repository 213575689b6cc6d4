"""Best-of-n over the SFT policy's samples, picked by the RM and by the labeller, on held-out prompts:
what an RM-guided policy can reach at a given KL (best-of-n's KL is ln n − (n−1)/n).

    python scripts/rm_best_of_n.py runs/smoke 96      # run dir, prompts
"""
import torch, sys, math, numpy as np
torch.set_num_threads(1)
from pathlib import Path
from orchestrator.config.loader import from_dict, load_file
from orchestrator.config.run import RunConfig
from orchestrator.phases.context import PhaseContext, load_run_tokenizer, parent_shards
from orchestrator.phases.outputs import frozen_model
from orchestrator.phases.sft import phase_file
from orchestrator.data.rlhf import load_prompts, collate_prompts, PromptExample
from orchestrator.data.format import decode_response
from orchestrator.data.task import oracle_score
from orchestrator.phases.sampling import sample, sampling_generator
from orchestrator.phases import rl_math
from orchestrator.phases.ppo import forward_rollout
run = Path(sys.argv[1]); N = 8; P = int(sys.argv[2]) if len(sys.argv) > 2 else 96
cfg = from_dict(RunConfig, load_file(run / "run_config.yaml"))
ctx = PhaseContext(phase="ppo", run_dir=run, config=cfg, rank=0, world=1)
tok = load_run_tokenizer(ctx); mc = cfg.model; cpu = torch.device("cpu")
sft = frozen_model(mc, head="lm", shards=parent_shards(ctx, parent="sft", tokenizer=tok), device=cpu, dtype=torch.float32)
rm = frozen_model(mc, head="scalar", shards=parent_shards(ctx, parent="reward", tokenizer=tok), device=cpu, dtype=torch.float32)
prompts, _ = load_prompts(phase_file(ctx, "ppo_eval"), tokenizer=tok.hf(), max_prompt_len=100, template=cfg.data.prompt_template)
gen = sampling_generator(seed=0, device=cpu)
R, O = np.zeros((P, N)), np.zeros((P, N))
for i in range(0, P, 8):
    ex = [e for e in prompts[i:i + 8] for _ in range(N)]
    b = collate_prompts(ex, pad_id=tok.pad_id)
    r = sample(sft, input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=16, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=gen)
    with torch.no_grad():
        v = forward_rollout(rm, {"sequences": r.sequences, "attention_mask": r.attention_mask, "position_ids": r.position_ids}).logits
    last = r.prompt_len + rl_math.last_token_index(r.response_mask)
    s = v.gather(1, last[:, None]).squeeze(1).numpy()
    o = [oracle_score(e.prompt, decode_response(tok.hf(), x, eos_id=tok.eos_id)) for e, x in zip(ex, r.responses)]
    R[i:i + 8] = s.reshape(-1, N); O[i:i + 8] = np.array(o).reshape(-1, N)
print("SFT mean oracle", O.mean().round(3))
for n in (2, 4, 8):
    by_rm = O[np.arange(P), R[:, :n].argmax(1)].mean(); by_or = O[:, :n].max(1).mean()
    print(f"best-of-{n} (KL {math.log(n) - (n - 1) / n:.2f}): by RM {by_rm:.3f}, by oracle {by_or:.3f}")
