from pathlib import Path

from orchestrator.config.run import RunConfig
from orchestrator.phases import rl_math
from orchestrator.phases.context import PhaseContext
from orchestrator.phases.ppo import PPO


def ppo_phase() -> PPO:
    """A PPO phase with the state ``setup`` would give it, without models or data."""
    phase = PPO(PhaseContext(phase="ppo", run_dir=Path("run"), config=RunConfig(), rank=0, world=1))
    phase.kl, phase.ptx_position = rl_math.AdaptiveKL(value=0.02, target=1.0), 0
    return phase


def test_a_ppo_checkpoint_keeps_prompt_and_ptx_positions_and_the_adapted_kl_coefficient():
    trained = ppo_phase()
    trained.position, trained.ptx_position = 96, 384
    trained.kl.update(3.0)  # the adaptive controller raised β
    resumed = ppo_phase()
    resumed.restore(trained.state())
    assert (resumed.position, resumed.ptx_position, resumed.kl.value) == (96, 384, trained.kl.value)
    assert resumed.kl.value != 0.02

