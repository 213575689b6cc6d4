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

from orchestrator.config.cluster import DEVICES
from orchestrator.config.loader import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, UNIT_ABOVE_ZERO, UNIT_BELOW_ONE,
                                        ConfigError, FieldError, Range, apply_overrides, check_ranges, from_dict,
                                        load_file, to_dict)
from orchestrator.config.model import GPTConfig, get_model
from orchestrator.config.phase_data import PromptDataConfig, RewardDataConfig, SFTDataConfig
from orchestrator.data.curation.config import CurationConfig
from orchestrator.data.format import DEFAULT_TEMPLATE, Template
from orchestrator.data import labeller as labellers
from orchestrator.data.task import TaskConfig
from orchestrator.plan.layout import Layout
from orchestrator.plan.validate import layout_range_errors

PHASES = ("pretrain", "sft", "reward", "ppo")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the job runs. ``gpu: cpu`` runs ranks as processes on this machine (gloo)."""

    gpu: str = "cpu"
    """Cluster preset name (cpu, a100-40g, a100-80g, h100-80g, h200)."""
    nodes: int = 1
    gpus_per_node: int = 1
    """Ranks per node (GPUs, or CPU processes for gpu: cpu)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """The dtype the models compute in. auto: bf16 on GPUs; on CPUs whichever of bf16 and fp32
    matmuls runs faster on this machine (measured once, ``engine.peak``), so a CPU with bf16
    matrix units (AMX) trains in bf16. ``orchestrate run`` writes the choice into the run's
    ``run_config.yaml``. The device is ``gpu``'s kind (CPU ranks on gloo, or CUDA ranks on NCCL),
    never whatever happens to be visible."""

    def __post_init__(self) -> None:
        if self.gpu.lower() not in DEVICES:
            raise FieldError("gpu", self.gpu, f"must be one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise FieldError("precision", self.precision, f"must be one of {', '.join(PRECISIONS)}")
        check_ranges(self, {"nodes": AT_LEAST_ONE, "gpus_per_node": AT_LEAST_ONE})

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def device_type(self) -> str:
        """``cpu`` for ``gpu: cpu``, else ``cuda``: where every rank computes."""
        return "cpu" if self.gpu.lower() == "cpu" else "cuda"


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
    timeout_minutes: int = 30
    """Collective timeout (minutes): a dead rank fails the job instead of hanging it. It must
    outlast the longest work one rank does while the others wait in a collective: rank 0 hashing
    a saved checkpoint for the manifest (SHA-256 at roughly 1 GB/s on one core: gpt3-175b's 700 GB
    of fp32 weights take about 12 minutes), or policy-ranking sampling on the RM's ranks. 30, as
    torch's own default for gloo; raise it for larger models (``--set launch.timeout_minutes=60``)."""
    launcher_args: str = ""
    """Extra flags for the multi-node backend (deepspeed ``--launcher_args``, e.g. mpirun or srun flags)."""
    slurm_partition: Optional[str] = None
    """``#SBATCH --partition`` of the script ``orchestrate run --sbatch`` writes."""
    slurm_account: Optional[str] = None
    slurm_time: str = "24:00:00"
    """``#SBATCH --time`` (wall-clock limit, HH:MM:SS or D-HH:MM:SS)."""

    def __post_init__(self) -> None:
        check_ranges(self, {"master_port": Range(1, 65535), "timeout_minutes": AT_LEAST_ONE})


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
        if self.weight not in POSITIVE:
            raise FieldError("weight", self.weight, f"must be > 0 (source {self.name!r}: leave it out instead)")


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
    """SFT / RM / PPO JSONL files in the shipped task's names and fields (``sft_train.jsonl`` …);
    None: generate the shipped word-list task into the run directory (for the phases below leave unset)."""
    sft: Optional[SFTDataConfig] = None
    """Your demonstrations: ``{path, prompt_field, response_field, eval_path | eval_fraction}``."""
    reward: Optional[RewardDataConfig] = None
    """Your comparisons: ``{path, format: ranked | pairwise, prompt_field, responses_field |
    chosen_field + rejected_field, merge_pairs, eval_path | eval_fraction}``."""
    ppo: Optional[PromptDataConfig] = None
    """Your PPO prompts: ``{path, prompt_field, eval_path | eval_fraction}``."""
    template: str = DEFAULT_TEMPLATE
    """How a prompt and its response are joined: ``{prompt}`` then ``{response}``; the whitespace
    right before ``{response}`` starts the response (the part the model writes)."""
    labeller: Optional[str] = None
    """``wordlist`` (the shipped task's oracle), ``none``, or ``module:function`` (a callable
    (prompt, response) -> float on PYTHONPATH); unset: ``wordlist`` when every RLHF phase reads the
    shipped task, else ``none``."""
    pretrain_loss_blocks: int = 64
    """Held-out corpus blocks (of pretrain.loop.seq_len tokens) every phase's ``pretrain_loss`` is measured on."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The shipped word-list task (noise rate, words per answer, topics, rows per file)."""
    tokenizer_task_repeats: int = 1500
    """The trained BPE also reads the task's word lists this many times, so each task word is one
    token (as a tokenizer trained on broad data would have it); 0: the corpus alone. A tiny model
    cannot learn to spell 3-token words in a CPU-minute, and the RM should see wrong words as wrong tokens."""
    curation: CurationConfig = field(default_factory=CurationConfig)
    """GPT-3's data preparation (quality filter, fuzzy dedup, contamination), each stage off unless named."""

    @property
    def own_data(self) -> tuple[str, ...]:
        """The RLHF phases that read your files (``data.sft`` / ``reward`` / ``ppo``, or ``task_dir``)."""
        if self.task_dir:
            return ("sft", "reward", "ppo")
        return tuple(phase for phase in ("sft", "reward", "ppo") if getattr(self, phase) is not None)

    @property
    def labeller_spec(self) -> str:
        """``labeller`` as set, or ``wordlist`` for the shipped task and ``none`` for your own data."""
        if self.labeller is not None:
            return self.labeller
        return labellers.NONE if self.own_data else labellers.WORDLIST

    @property
    def prompt_template(self) -> Template:
        return Template.parse(self.template)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("data.sources is empty: name at least one corpus (path: embedded is the shipped one)")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: names {names} must be distinct")
        check_ranges(self, {"eval_fraction": Range(0.0, 0.5, high_open=True), "split_seed": NON_NEGATIVE,
                            "tokenizer_task_repeats": NON_NEGATIVE, "pretrain_loss_blocks": AT_LEAST_ONE})
        try:
            Template.parse(self.template)
        except ValueError as err:
            raise FieldError("template", self.template, str(err)) from None
        if self.labeller is not None:
            try:
                labellers.check_spec(self.labeller)
            except ValueError:
                raise FieldError("labeller", self.labeller, labellers.SPEC_FORMS) from None
        if self.tokenizer == "train" and self.vocab_size not in Range(300, 1 << 20):
            raise FieldError("vocab_size", self.vocab_size, "must be in 300..1048576 (a byte-level BPE needs 256 "
                                                            "bytes + special tokens + merges)")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (GPT-3, Brown et al. 2020, §B)."""

    lr: float = 6e-4
    """Peak learning rate; 0 freezes the weights (a test of what a phase hands on)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr × min_lr_ratio (GPT-3: 10%)."""
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0: no clipping."""

    def __post_init__(self) -> None:
        check_ranges(self, {"lr": NON_NEGATIVE, "min_lr_ratio": UNIT, "warmup_steps": NON_NEGATIVE,
                            "weight_decay": NON_NEGATIVE, "beta1": UNIT_BELOW_ONE, "beta2": UNIT_BELOW_ONE,
                            "eps": POSITIVE, "grad_clip": NON_NEGATIVE})


@dataclass(frozen=True)
class LoopConfig:
    """The shared train loop's cadence."""

    steps: int = 100
    """Optimizer steps."""
    seq_len: int = 128
    log_every: int = 10
    eval_every: int = 50
    """Evaluate every this many steps (0: only the final evaluation)."""
    eval_batches: int = 4
    save_every: int = 50
    """Checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Committed checkpoints kept on disk (older ones are pruned after each save)."""
    reshardable_checkpoints: bool = True
    """Also write each rank's fp32 weights and Adam moments in the sharded format
    (``CHECKPOINT/MODEL/shards``: every rank its own, nothing gathered), so an interrupted phase
    can resume under another layout with its optimizer state. Off: a resume must keep the
    checkpoint's layout (another one is refused before launch)."""
    max_bad_steps: int = 3
    """NaN/inf losses in a row before the run stops (each one skips its step)."""

    def __post_init__(self) -> None:
        check_ranges(self, {"steps": AT_LEAST_ONE, "seq_len": AT_LEAST_ONE, "log_every": AT_LEAST_ONE,
                            "eval_every": NON_NEGATIVE, "eval_batches": AT_LEAST_ONE, "save_every": NON_NEGATIVE,
                            "keep_checkpoints": AT_LEAST_ONE, "max_bad_steps": AT_LEAST_ONE})


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled from a policy: temperature, then nucleus (top-p, Holtzman et al.
    2020), at most ``max_new_tokens`` (stopping at EOS)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        check_ranges(self, {"temperature": POSITIVE, "top_p": UNIT_ABOVE_ZERO, "max_new_tokens": AT_LEAST_ONE})


@dataclass(frozen=True)
class PhaseConfig:
    """What every phase has: a layout, an optimizer and a loop."""

    layout: Layout = field(default_factory=Layout)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        layout = dataclasses.replace(self.layout, dp=1) if self.layout.dp == -1 else self.layout
        for name, value, valid in layout_range_errors(layout):
            raise FieldError(f"layout.{name}", value, valid)
        if self.optim.warmup_steps > self.schedule_steps:
            raise FieldError("optim.warmup_steps", self.optim.warmup_steps,
                             f"must be in 0..{self.schedule_steps} (the phase's optimizer steps, {self._steps_text}): "
                             f"lower it or raise loop.steps")

    @property
    def schedule_steps(self) -> int:
        """Optimizer steps the LR schedule spans."""
        return self.loop.steps

    @property
    def _steps_text(self) -> str:
        return "loop.steps"


@dataclass(frozen=True)
class PretrainConfig(PhaseConfig):
    pass


@dataclass(frozen=True)
class SFTConfig(PhaseConfig):
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=5))
    pretrain_mix: float = 0.0
    """Share of every micro-batch's rows that are pretraining blocks (of loop.seq_len tokens, the
    corpus's training split) instead of demonstrations, against the alignment tax; the loss is the
    token mean over both, so a block weighs as much as loop.seq_len response tokens. 0: off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, {"pretrain_mix": UNIT_BELOW_ONE})
        if self.pretrain_mix and not 1 <= self.pretrain_rows <= self.layout.micro_batch - 1:
            raise FieldError("pretrain_mix", self.pretrain_mix,
                             f"× layout.micro_batch {self.layout.micro_batch} must round to 1..{self.layout.micro_batch - 1} "
                             f"rows of pretraining blocks (it rounds to {self.pretrain_rows}): raise one of them, or 0 "
                             f"turns the mix off")

    @property
    def pretrain_rows(self) -> int:
        """Pretraining blocks in each micro-batch: round(pretrain_mix × micro_batch)."""
        return round(self.pretrain_mix * self.layout.micro_batch)


@dataclass(frozen=True)
class RewardConfig(PhaseConfig):
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=5))
    k: int = 4
    """Responses ranked per prompt (InstructGPT: 4 to 9; 2 to 9 here)."""
    candidates: Literal["policy", "file"] = "policy"
    """``policy``: the K responses of each rm_*.jsonl prompt are sampled from the SFT model (with
    ``sampling``) and ranked by the labeller, as InstructGPT's labelers ranked model outputs, so
    the RM learns on the distribution PPO will show it; ``file``: the responses in the files as given."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How the policy candidates are sampled; the defaults are PPO's (``ppo.temperature``,
    ``ppo.top_p``, ``ppo.max_new_tokens``): keep the two alike so the RM is trained on what PPO samples."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, {"k": Range(2, 9)})


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
    """Passes over each step's rollouts."""
    minibatches: int = 1
    """Optimizer steps per pass: each step samples minibatches × micro_batch × grad_accum prompts per
    DP rank, and every pass takes one optimizer step per minibatch (PPO's minibatch SGD)."""
    normalize_reward: bool = False
    """Whiten the RM score with the mean and std of the SFT policy's first rollouts (the reward is
    then in units of SFT's spread, so β, value_clip and the critic's scale do not depend on the RM's
    arbitrary offset and scale; InstructGPT §C.3 biases the RM so demonstrations score 0); the critic,
    initialised from the RM, reads its head through the same affine map, so it starts in reward units."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    offload_frozen: bool = False
    """Keep the reference and reward models' weights on the CPU (ZeRO-3 param offload on GPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, {"critic_lr": NON_NEGATIVE, "kl_coef": NON_NEGATIVE, "target_kl": POSITIVE, "gamma": UNIT,
                            "lam": UNIT, "clip_ratio": POSITIVE, "value_clip": POSITIVE, "ptx_coef": NON_NEGATIVE,
                            "ppo_epochs": AT_LEAST_ONE, "minibatches": AT_LEAST_ONE, "temperature": POSITIVE, "top_p": UNIT_ABOVE_ZERO,
                            "max_new_tokens": AT_LEAST_ONE})

    @property
    def schedule_steps(self) -> int:
        """Each PPO step takes ``ppo_epochs × minibatches`` optimizer steps."""
        return self.loop.steps * self.ppo_epochs * self.minibatches

    @property
    def _steps_text(self) -> str:
        return "loop.steps × ppo_epochs × minibatches"

    @property
    def sampling(self) -> SamplingConfig:
        """The rollouts' sampling settings (``temperature``, ``top_p``, ``max_new_tokens``)."""
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens)


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

    def __post_init__(self) -> None:
        check_ranges(self, {"prompts": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "max_new_tokens": AT_LEAST_ONE,
                            "temperature": POSITIVE, "top_p": UNIT_ABOVE_ZERO, "seed": NON_NEGATIVE})


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
        if not self.phases or list(self.phases) != sorted(set(self.phases), key=PHASES.index):
            raise FieldError("phases", list(self.phases), f"must be distinct, in the order {', '.join(PHASES)}")
        check_ranges(self, {"seed": NON_NEGATIVE})
        self._check_against_model()
        self._check_labeller()

    def _check_labeller(self) -> None:
        """What needs a labeller: ranking the SFT model's samples (``reward.candidates: policy``)."""
        if "reward" in self.phases and self.reward.candidates == "policy" and self.data.labeller_spec == labellers.NONE:
            why = "data.labeller is none" if self.data.labeller else \
                f"data.labeller is unset and {', '.join('data.' + p for p in self.data.own_data)} is your data, so none"
            raise FieldError("reward.candidates", "policy",
                             f"ranks the SFT model's samples with the labeller, and {why}: set reward.candidates: "
                             f"file (train on the comparisons in your files), or name a labeller (data.labeller: "
                             f"module:function)")

    def _check_against_model(self) -> None:
        """What the model's context and vocabulary bound."""
        ctx = self.model.ctx
        for phase in self.phases:
            if self.phase(phase).loop.seq_len > ctx:
                raise FieldError(f"{phase}.loop.seq_len", self.phase(phase).loop.seq_len,
                                 f"must be in 1..{ctx} (model.ctx; raise it with --set model.ctx=N)")
        for key, value in (("ppo.max_new_tokens", self.ppo.max_new_tokens),
                           ("oracle_eval.max_new_tokens", self.oracle_eval.max_new_tokens)):
            if value >= ctx:
                raise FieldError(key, value, f"must be in 1..{ctx - 1} (below model.ctx: the prompt needs a token)")
        if self.data.tokenizer == "train" and self.data.vocab_size > self.model.vocab:
            raise FieldError("data.vocab_size", self.data.vocab_size,
                             f"must be <= model.vocab {self.model.vocab} (the model needs an id for every token)")

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
