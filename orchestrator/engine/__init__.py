"""From a plan to running processes: the DeepSpeed config, the launch argv, and the model and
engine built on each rank."""
