"""Predictable scaling (SPEC §11; OpenAI 2023, GPT-4 technical report §2.3): ``orchestrate scaling``.

config     the recipe's ``scaling:`` section (ladder size, fraction, tokens per parameter, LR rule, form)
ladder     compute-optimal small models of the target's family, the largest at most a fraction of it
runner     each rung an ordinary pretrain phase job under ``DIR/ladder/NAME`` (skip, resume, one eval set)
lr_rule    the LR rule fitted to a sweep of the ladder (``--lr-sweep``): each rung's best LR, a power law in width
fit, analysis   L(C) = a·C^b + c in log loss with a covariance band; leave-top-out check; choice of form
artifact, cluster   ``scaling.json`` / ``scaling.png``; the target's FLOPs, GPU-days and days on a cluster
workflow   the order of work the command follows
"""
