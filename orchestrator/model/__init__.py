"""The GPT and the pieces that lay it out: ``gpt`` (the plain module), ``attention`` (masks, KV
cache), ``moe`` (DeepSpeed MoE FFN), ``tensor_parallel`` (Megatron column/row/vocab layers),
``pipeline`` (DeepSpeed layer specs), ``params`` (init, sharding and plain names), ``loss``."""
