"""PPO variants in one process on a finished run's SFT and RM: the numbers of README's "RLHF that
visibly works" table (the ``v`` rows). The same PPO math as ``orchestrator/phases/ppo.py``
(``sample``, ``rl_math.token_rewards``/``gae``/``masked_whiten``/``value_loss``, ``actor_objective``,
reward normalised by the first rollouts' mean and std, the critic from the RM read in those units),
with plain torch AdamW (β2 0.95, clipping 1.0, cosine to 10 %) on one thread, and SFT's evaluation
protocol (128 held-out prompts, temperature 1, sampling seed 4321) every ``--eval_every`` steps.

    python scripts/ppo_variants.py --run runs/smoke --iters 40 --lr 1e-3 --beta 0.2            # v7
    python scripts/ppo_variants.py --run runs/smoke --iters 40 --lr 1e-3 --beta 0.2 --ptx 0.1  # PPO-ptx
"""
import torch, sys, math, time, json, argparse, numpy as np
torch.set_num_threads(1)
from pathlib import Path
from orchestrator.config.loader import from_dict, load_file
from orchestrator.config.run import RunConfig
from orchestrator.phases.context import PhaseContext, load_run_tokenizer, parent_shards
from orchestrator.phases.outputs import frozen_model
from orchestrator.phases.sft import phase_file
from orchestrator.data.rlhf import load_prompts, collate_prompts
from orchestrator.data.format import decode_response
from orchestrator.data.task import oracle_score
from orchestrator.phases.sampling import sample, sampling_generator
from orchestrator.phases import rl_math
from orchestrator.phases.ppo import forward_rollout, response_logprobs, actor_objective
ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/smoke"); ap.add_argument("--iters", type=int, default=60)
ap.add_argument("--batch", type=int, default=64); ap.add_argument("--mb", type=int, default=2)
ap.add_argument("--epochs", type=int, default=4); ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--clr", type=float, default=1e-3); ap.add_argument("--beta", type=float, default=0.05)
ap.add_argument("--lam", type=float, default=0.95); ap.add_argument("--warmup", type=int, default=0)
ap.add_argument("--eval_every", type=int, default=10); ap.add_argument("--critic", default="rm")
ap.add_argument("--ptx", type=float, default=0.0); ap.add_argument("--wd", type=float, default=0.0)
ap.add_argument("--seed", type=int, default=0, help="PPO's own randomness: prompt order and rollout sampling")
a = ap.parse_args()
run = Path(a.run)
cfg = from_dict(RunConfig, load_file(run / "run_config.yaml"))
ctx = PhaseContext(phase="ppo", run_dir=run, config=cfg, rank=0, world=1)
tok = load_run_tokenizer(ctx); mc = cfg.model; cpu = torch.device("cpu")
sft_state, rm_state = parent_shards(ctx, parent="sft", tokenizer=tok), parent_shards(ctx, parent="reward", tokenizer=tok)
def fm(head, st):
    return frozen_model(mc, head=head, shards=st, device=cpu, dtype=torch.float32)
ref, rm = fm("lm", sft_state), fm("scalar", rm_state)
actor = fm("lm", sft_state).requires_grad_(True); critic = fm("scalar", rm_state).requires_grad_(True)
def opt(m, lr): return torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=a.wd)
from orchestrator.phases.pretrain_loss import PretrainLoss
from orchestrator.data.pretrain import build_pretrain_data
from orchestrator.model.loss import lm_loss
pl_batches = PretrainLoss.for_run(cfg).batches(micro_batch=16, dp_rank=0, dp_size=1, pipeline=False)
ptx_data = build_pretrain_data(cfg.data, seq_len=64, seed=cfg.seed) if a.ptx else None
ptx_pos = 0
@torch.no_grad()
def pretrain_loss():
    actor.eval()
    return float(sum(lm_loss(actor(b["input_ids"]).logits, b["labels"]) for b in pl_batches) / len(pl_batches))
oa, oc = opt(actor, a.lr), opt(critic, a.clr)
total = a.iters * a.epochs * a.mb
def lr_at(step, base):
    if step < a.warmup: return base * (step + 1) / a.warmup
    prog = (step - a.warmup) / max(1, total - a.warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
train, _ = load_prompts(phase_file(ctx, "ppo_train"), tokenizer=tok.hf(), max_prompt_len=100, template=cfg.data.prompt_template)
held, _ = load_prompts(phase_file(ctx, "ppo_eval"), tokenizer=tok.hf(), max_prompt_len=100, template=cfg.data.prompt_template)
held = held[:128]
def rollout(model, ex, gen):
    model.eval(); b = collate_prompts(ex, pad_id=tok.pad_id)
    r = sample(model, input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=16, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=gen)
    return r
@torch.no_grad()
def score(r):
    batch = {"sequences": r.sequences, "attention_mask": r.attention_mask, "position_ids": r.position_ids,
             "response_mask": r.response_mask.float(), "prompt_len": r.prompt_len}
    p = r.prompt_len; last = p + rl_math.last_token_index(r.response_mask)
    batch["score"] = forward_rollout(rm, batch).logits.gather(1, last[:, None]).squeeze(1)
    batch["ref_logprobs"] = response_logprobs(forward_rollout(ref, batch).logits, r.sequences, p)
    actor.eval(); critic.eval()
    batch["old_logprobs"] = response_logprobs(forward_rollout(actor, batch).logits, r.sequences, p)
    batch["old_values"] = forward_rollout(critic, batch).logits[:, p - 1:-1].float()
    return batch
@torch.no_grad()
def evaluate():
    gen = sampling_generator(seed=4321, device=cpu); os_, kls, rs = [], [], []
    for i in range(0, len(held), 32):
        ex = held[i:i + 32]; r = rollout(actor, ex, gen); b = score(r)
        _, kl = rl_math.token_rewards(b["score"], b["old_logprobs"], b["ref_logprobs"], b["response_mask"], kl_coef=0)
        kls += kl.tolist(); rs += b["score"].tolist()
        os_ += [oracle_score(e.prompt, decode_response(tok.hf(), x, eos_id=tok.eos_id)) for e, x in zip(ex, r.responses)]
    return np.mean(os_), np.mean(kls), np.mean(rs), pretrain_loss()
units = None; gen = sampling_generator(seed=1 + a.seed, device=cpu); pos = 0; step = 0; t0 = time.time()
rng = np.random.default_rng(a.seed); order = rng.permutation(len(train))
print(vars(a)); print("it 0 eval oracle %.3f kl %.2f rm %.2f ptl %.3f" % evaluate(), flush=True)
for it in range(1, a.iters + 1):
    ex = [train[order[(pos + i) % len(train)]] for i in range(a.batch)]; pos += a.batch
    b = score(rollout(actor, ex, gen))
    if units is None:
        units = rl_math.RewardUnits(offset=float(b["score"].mean()), scale=float(b["score"].std()))
    mask = b["response_mask"]; b["old_values"] = units.apply(b["old_values"])
    rewards, kl = rl_math.token_rewards(units.apply(b["score"]), b["old_logprobs"], b["ref_logprobs"], mask, kl_coef=a.beta)
    if a.critic == "none": b["old_values"] = torch.zeros_like(b["old_values"])
    adv, b["returns"] = rl_math.gae(rewards, b["old_values"], mask, gamma=1.0, lam=a.lam)
    b["advantages"] = rl_math.masked_whiten(adv, mask)
    idx = torch.arange(a.batch); groups = [idx[g::a.mb] for g in range(a.mb)]
    actor.train(); critic.train()
    for _ in range(a.epochs):
        for g in groups:
            mb = {k: (v[g] if torch.is_tensor(v) else v) for k, v in b.items()}
            for o, base in ((oa, a.lr), (oc, a.clr)):
                for pg in o.param_groups: pg["lr"] = lr_at(step, base)
            if ptx_data is not None:
                blk = ptx_data.train_batch(position=ptx_pos, micro_batch=len(g)); ptx_pos += len(g)
                mb["ptx_input_ids"], mb["ptx_labels"] = blk["input_ids"], blk["labels"]
            loss, st = actor_objective(actor, mb, clip_ratio=0.2, ptx_coef=a.ptx)
            oa.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0); oa.step()
            if a.critic != "none":
                p = mb["prompt_len"]; v = units.apply(forward_rollout(critic, mb).logits[:, p - 1:-1].float())
                vl = rl_math.value_loss(v, mb["old_values"], mb["returns"], mb["response_mask"], value_clip=0.2)
                oc.zero_grad(); vl.backward(); torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0); oc.step()
            step += 1
    if it % a.eval_every == 0:
        print("it %d t %.0f eval oracle %.3f kl %.2f rm %.2f ptl %.3f | train kl %.2f" % ((it, time.time() - t0) + evaluate() + (float(kl.mean()),)), flush=True)
