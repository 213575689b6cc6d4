"""From a run config to the processes that start a phase, on one machine or a cluster.

``hostfile``  read and check ``host slots=N`` files
``command``   argv for ``deepspeed`` / ``torchrun`` / ``accelerate launch`` (data, saved as launch.json)
``files``     ``.deepspeed_env``, the accelerate config, scheduler rank variables
``slurm``     the ``sbatch`` script
"""
from orchestrator.engine.launch.command import (ENTRY_MODULE, Entry, LaunchCommand, LaunchPlan, Target,
                                                accelerate_argv, build_launch_plan, deepspeed_argv,
                                                phase_entry, torchrun_argv, train_script)
from orchestrator.engine.launch.files import (accelerate_config, deepspeed_env_text, launch_env,
                                              rank_env_from_scheduler)
from orchestrator.engine.launch.hostfile import (Host, LaunchError, check_hosts, check_master_addr, parse_hostfile,
                                                 read_hostfile)
from orchestrator.engine.launch.slurm import sbatch_script

__all__ = ["ENTRY_MODULE", "Entry", "Host", "LaunchCommand", "LaunchError", "LaunchPlan", "Target",
           "accelerate_argv", "accelerate_config", "build_launch_plan", "check_hosts", "check_master_addr", "deepspeed_argv",
           "deepspeed_env_text", "launch_env", "parse_hostfile", "phase_entry", "rank_env_from_scheduler",
           "read_hostfile", "sbatch_script", "torchrun_argv", "train_script"]
