"""The run config: what to train, on what, and how each of the four phases runs.

A recipe (YAML) fills these dataclasses; ``load_run_config`` applies the one precedence
defaults < recipe < ``--set`` overrides and refuses unknown keys and wrong types.
Hyperparameters live here with InstructGPT / GPT-3 values as documented defaults, scaled down
where the tiny model needs it; trainers read them, never hard-code them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from orchestrator.config.loader import ConfigError, apply_overrides, from_dict, load_file, to_dict
from orchestrator.config.model import GPTConfig, get_model
from orchestrator.data.task import TaskConfig
from orchestrator.plan.layout import Layout

PHASES = ("pretrain", "sft", "reward", "ppo")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the job runs. ``gpu: cpu`` runs ranks as processes on this machine (gloo)."""

    gpu: str = "cpu"
    """Cluster preset name (cpu, a100-40g, a100-80g, h100-80g, h200)."""
    nodes: int = 1
    gpus_per_node: int = 1
    """Ranks per node (GPUs, or CPU processes for gpu: cpu)."""

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class LaunchConfig:
    """How each phase process is started (``orchestrator/engine/launch`` turns this into argv)."""

    launcher: Literal["deepspeed", "torchrun", "accelerate"] = "deepspeed"
    multinode: Literal["pdsh", "openmpi", "slurm", "no_ssh"] = "pdsh"
    """The deepspeed launcher's multi-node backend (``--launcher``), or ``no_ssh`` with --node_rank."""
    hostfile: Optional[str] = None
    """``host slots=N`` lines, one per node; required when nodes > 1."""
    master_addr: str = "127.0.0.1"
    """Address of node 0 that every rank rendezvouses at."""
    master_port: Optional[int] = None
    """Rendezvous port; unset: a free one on single-node runs (picked as each phase starts, so two
    runs on one machine never collide), 29500 across nodes (every node must agree)."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables every node needs; written to ``.deepspeed_env`` (after the NCCL/timeout defaults)."""
    timeout_minutes: int = 10
    """Collective timeout: a dead rank fails the job instead of hanging it."""
    launcher_args: str = ""
    """Extra flags for the multi-node backend (deepspeed ``--launcher_args``, e.g. mpirun or srun flags)."""
    slurm_partition: Optional[str] = None
    """``#SBATCH --partition`` of the script ``orchestrate run --sbatch`` writes."""
    slurm_account: Optional[str] = None
    slurm_time: str = "24:00:00"
    """``#SBATCH --time`` (wall-clock limit, HH:MM:SS or D-HH:MM:SS)."""

    def __post_init__(self) -> None:
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise ValueError(f"launch.master_port={self.master_port} must be in 1..65535")
        if self.timeout_minutes < 1:
            raise ValueError(f"launch.timeout_minutes={self.timeout_minutes} must be >= 1")


@dataclass(frozen=True)
class SourceConfig:
    """One pretraining corpus: local files read through ``datasets``."""

    name: str = "embedded"
    path: str = "embedded"
    """A file, a directory or a glob of .txt/.jsonl/.parquet (optionally .gz); ``embedded`` is the
    shipped corpus, ``embedded:NAME`` one of its files (library, whatsnew, tutorial, reference, using)."""
    weight: float = 1.0
    """Share of training tokens drawn from this source (normalised over all sources)."""
    text_field: str = "text"
    """The field holding the text in JSONL and parquet files."""
    text_unit: Literal["line", "paragraph", "document"] = "paragraph"
    """What one document is in a .txt file: a line, a blank-line separated paragraph, or the file."""

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"source {self.name!r}: weight={self.weight} must be > 0 (leave the source out instead)")


@dataclass(frozen=True)
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    tokenizer: str = "train"
    """``train``: a byte-level BPE trained on the corpus and cached; else a local HF tokenizer directory."""
    vocab_size: int = 2048
    """Vocabulary of the trained BPE; the model's vocab must be at least this."""
    eval_fraction: float = 0.02
    """Share of each source's documents held out for evaluation (at least one when a source has two)."""
    split_seed: int = 0
    """Which documents are held out; fixed apart from the run seed so runs share one eval set."""
    cache_dir: str = ".cache/orchestrator"
    """Trained tokenizers and tokenized corpora, keyed by content hashes."""
    task_dir: Optional[str] = None
    """SFT / RM / PPO JSONL files; None: generate the shipped oracle task into the run directory."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The shipped word-list task (noise rate, words per answer, topics, rows per file)."""
    tokenizer_task_repeats: int = 1500
    """The trained BPE also reads the task's word lists this many times, so each task word is one
    token (as a tokenizer trained on broad data would have it); 0: the corpus alone. A tiny model
    cannot learn to spell 3-token words in a CPU-minute, and the RM should see wrong words as wrong tokens."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty: name at least one corpus (path: embedded is the shipped one)")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: names {names} must be distinct")
        if not 0.0 <= self.eval_fraction < 0.5:
            raise ValueError(f"data.eval_fraction={self.eval_fraction} must be in [0, 0.5)")
        if self.tokenizer == "train" and not 300 <= self.vocab_size <= 1 << 20:
            raise ValueError(f"data.vocab_size={self.vocab_size}: a byte-level BPE needs 256 bytes + "
                             "special tokens + merges; use 300 to 1048576")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (GPT-3, Brown et al. 2020, §B)."""

    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr × min_lr_ratio (GPT-3: 10%)."""
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass(frozen=True)
class LoopConfig:
    """The shared train loop's cadence."""

    steps: int = 100
    """Optimizer steps."""
    seq_len: int = 128
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 50
    keep_checkpoints: int = 2
    """Committed checkpoints kept on disk (older ones are pruned after each save)."""
    reshardable_checkpoints: bool = True
    """Also store each trained model's full weights in every checkpoint, so an interrupted phase
    can resume under another layout. Each save then gathers the whole model on rank 0 (a
    collective, and host RAM for the whole model): turn it off for large models; a resume must
    then keep the checkpoint's layout (another one is refused before launch)."""
    max_bad_steps: int = 3
    """NaN/inf losses in a row before the run stops (each one skips its step)."""


@dataclass(frozen=True)
class PhaseConfig:
    """What every phase has: a layout, an optimizer and a loop."""

    layout: Layout = field(default_factory=Layout)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


@dataclass(frozen=True)
class PretrainConfig(PhaseConfig):
    pass


@dataclass(frozen=True)
class SFTConfig(PhaseConfig):
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=5))


@dataclass(frozen=True)
class RewardConfig(PhaseConfig):
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=5))
    k: int = 4
    """Responses ranked per prompt (InstructGPT: 4 to 9)."""
    candidates: Literal["policy", "file"] = "policy"
    """``policy``: the K responses of each rm_*.jsonl prompt are sampled from the SFT model (with PPO's
    sampling settings) and ranked by the labeller, as InstructGPT's labelers ranked model outputs, so
    the RM learns on the distribution PPO will show it; ``file``: the responses in the files as given."""


@dataclass(frozen=True)
class PPOConfig(PhaseConfig):
    """PPO-ptx (Ouyang et al. 2022, eq. 2) with per-token KL to the SFT policy."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0))
    critic_lr: float = 5e-5
    kl_coef: float = 0.02
    """β: reward = RM score at EOS − β · (log π − log π_SFT) per token."""
    adaptive_kl: bool = False
    target_kl: float = 1.0
    """Adaptive controller's target KL per sequence (Ziegler et al. 2019)."""
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    value_clip: float = 0.2
    ptx_coef: float = 27.8
    """γ_ptx × pretraining LM loss, in the same optimizer step; 0 turns PPO-ptx off."""
    ppo_epochs: int = 1
    """Optimizer passes over each rollout batch (micro_batch × grad_accum prompts per DP rank)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    offload_frozen: bool = False
    """Keep the reference and reward models' weights on the CPU (ZeRO-3 param offload on GPU)."""


@dataclass(frozen=True)
class OracleEvalConfig:
    """How SFT and PPO policies are scored on held-out prompts — one protocol, so the two compare."""

    prompts: int = 128
    """Held-out prompts (from ppo_eval.jsonl) sampled and scored by the task's oracle."""
    batch_size: int = 32
    max_new_tokens: int = 16
    temperature: float = 1.0
    """Sampling temperature; greedy decoding of a tiny model hides the difference (SPEC §6)."""
    top_p: float = 1.0
    seed: int = 4321
    """The sampling seed, the same for every policy evaluated."""


@dataclass(frozen=True)
class RunConfig:
    """A whole run: model, data, cluster, launch, and the four phases."""

    name: str = "run"
    run_dir: str = "runs/run"
    seed: int = 1234
    model: GPTConfig = field(default_factory=lambda: get_model("tiny"))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    """Phases this recipe runs, in order."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    oracle_eval: OracleEvalConfig = field(default_factory=OracleEvalConfig)

    def __post_init__(self) -> None:
        bad = [p for p in self.phases if p not in PHASES]
        if bad:
            raise ConfigError(f"phases: unknown phase {bad[0]!r}: choose from {', '.join(PHASES)}")

    def phase(self, name: str) -> PhaseConfig:
        return getattr(self, name)

    def to_dict(self) -> dict:
        return to_dict(self)


def resolve_model(spec: object, where: str = "model") -> GPTConfig:
    """A model given as a preset name, a YAML/JSON file, or {preset: NAME, field: value, ...}."""
    if isinstance(spec, GPTConfig):
        return spec
    if isinstance(spec, str):
        if Path(spec).suffix in (".yaml", ".yml", ".json"):
            return resolve_model(load_file(spec), where)
        try:
            return get_model(spec)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    if isinstance(spec, dict):
        fields = dict(spec)
        base = resolve_model(fields.pop("preset"), where) if "preset" in fields else GPTConfig()
        merged = {**to_dict(base), **fields}
        if "preset" in spec and "name" not in fields and len(fields) > 0:
            merged["name"] = f"{base.name}+custom"
        return from_dict(GPTConfig, merged, where)
    raise ConfigError(f"{where}={spec!r}: give a preset name, a model file, or a mapping")


def load_run_config(recipe: str | Path | dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """defaults < recipe < overrides, checked against the dataclasses."""
    data = load_file(recipe) if isinstance(recipe, (str, Path)) else dict(recipe or {})
    data = apply_overrides(data, overrides or [])
    if "model" in data:
        data["model"] = resolve_model(data["model"])
    return from_dict(RunConfig, data)


def run_config_yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_run_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(run_config_yaml(config))
