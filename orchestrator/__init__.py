"""GPT Orchestrator: plan, launch and run GPT training on DeepSpeed clusters.

The data flows through the folders in this order: ``config`` (what to train) → ``plan`` (how to
lay it out: the one validator, memory, time; pure Python) → ``engine`` (the DeepSpeed config,
launch argv, the model and engine on a rank) → ``phases`` (pretrain, sft, reward, ppo through one
loop) → ``handoff`` (checkpoints, manifests, export and import); ``runner`` starts the phases.
"""
__version__ = "0.1.0"
