"""Training loop of the synthesis network G (``avatarsdk train gan``), Sec. 3.1 of the paper.

StyleGAN2 (Karras et al. 2020, config F) as the paper trains it, on the
6-channel UV maps of :mod:`avatarsdk.train.data`:

* G (no noise inputs) against three discriminators (albedo, position, joint;
  :class:`~avatarsdk.nn.stylegan.Discriminators`), their logistic losses summed;
* non-saturating generator loss; logistic discriminator loss;
* R1 on real maps with lazy regularisation: every ``r1_interval`` steps, weight
  ``gamma / 2 * r1_interval`` (the formula of :func:`~avatarsdk.nn.stylegan.r1_loss`),
  D's Adam hyper-parameters adjusted by :func:`~avatarsdk.nn.stylegan.lazy_regularization_adam`;
* style-mixing regularisation: with probability ``style_mixing_prob`` a batch
  takes its latents from two z, switched at a cutoff uniform in [1, L - 1];
* an EMA copy of G (half-life ``ema_kimg`` thousand images) is the network shipped;
* Adam with betas (0, 0.99); no path-length regulariser (see the note in
  :mod:`avatarsdk.nn.stylegan`).

One step = one G update, one D update, and every ``r1_interval`` steps one R1
update of D, all on ``batch_size`` samples. Every random draw (latents,
mixing, the real batch indices) comes from one CPU ``torch.Generator`` seeded
by ``TrainConfig.seed`` whose state is checkpointed, so on the CPU a run resumed
from a checkpoint reproduces the uninterrupted run bit for bit (on CUDA up to
the nondeterminism of its kernels).

Outputs in ``out_dir``::

    checkpoints/step-00001000.pt   kind "generator" (the EMA G) + extra: G, D, both Adam states, RNG, config
    stats.jsonl                    one JSON line per log interval
    generator.pt                   the final EMA G alone (kind "generator"): the shipped weights
    training.json                  what the datasheet reports (config, steps, time, machine, sha256)
    DATASHEET.md                   :func:`avatarsdk.train.data.write_datasheet`
    TRAIN_COMMAND.txt              the command line given by the caller
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk.errors import AvatarError, InputError, WeightsError
from avatarsdk.files import atomic_write_bytes
from avatarsdk.nn import checkpoint as ckpt
from avatarsdk.nn.stylegan import (
    DiscriminatorConfig,
    Discriminators,
    Generator,
    GeneratorConfig,
    d_logistic_loss,
    g_nonsaturating_loss,
    lazy_regularization_adam,
    mix_ws,
    r1_penalty,
    sample_z,
)
from avatarsdk.train.data import UVDataset, machine_info, write_datasheet
from avatarsdk.train.common import IntervalStats, config_from_dict, config_to_dict, cpu_state, latest_checkpoint, read_stats, training_device

log = logging.getLogger(__name__)

__all__ = [
    "TRAIN_FORMAT",
    "Coverage",
    "TrainConfig",
    "TrainResult",
    "coverage_from_features",
    "coverage_stats",
    "latest_checkpoint",
    "map_features",
    "train_gan",
]

TRAIN_FORMAT = 1
"""Version of the training checkpoint's ``extra`` layout."""

Progress = Callable[[str, float], None]

_D_SEED_OFFSET = 7919  # D's init seed = TrainConfig.seed + this (G uses the seed itself)
# Fields that may change when resuming (they do not change the trajectory).
_RESUMABLE_CHANGES = frozenset({"steps", "total_kimg", "checkpoint_interval", "keep_checkpoints", "log_interval",
                                "device"})


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a GAN training run (stored in every checkpoint).

    Attributes:
        generator: G's architecture (resolution must match the data set).
        discriminator: the discriminators' architecture; None: matched to G
            (:meth:`DiscriminatorConfig.for_generator`).
        batch_size: samples per step for G and D.
        lr: Adam learning rate (D's is adjusted for lazy R1).
        betas: Adam betas (StyleGAN2: (0, 0.99)).
        r1_gamma: R1 weight gamma (StyleGAN2: 10 at 256; ~ R^2 / batch scaling).
        r1_interval: steps between R1 passes (lazy regularisation; 1 = every step).
        style_mixing_prob: probability that a batch uses two latents.
        mirror: double the data set with its UV-correct left-right mirror.
        steps: training length in steps; None: from ``total_kimg``.
        total_kimg: training length in thousands of real samples shown to D
            (used when ``steps`` is None).
        ema_kimg: half-life of the EMA generator, thousands of samples.
        ema_rampup: if set, the EMA half-life is at most ``ema_rampup`` times the
            samples seen so far (StyleGAN2-ADA's ramp-up); None: off (config F).
        seed: seeds the weights (G: seed, D: seed + 7919) and every random draw.
        device: "cpu" or a CUDA device ("cuda", "cuda:1").
        checkpoint_interval: steps between checkpoints (0: only the final one).
        keep_checkpoints: how many of the newest step checkpoints to keep (>= 1).
        log_interval: steps between ``stats.jsonl`` lines.
        d_warmup_steps: steps at the start of the run in which only the
            discriminators train (G frozen): for a run started from a trained
            generator with fresh discriminators (``init_generator`` of
            :func:`train_gan`), so that G's first gradients come from a D that
            has learnt something rather than from random weights.
        fitted_fraction: share of each real batch drawn from the data set's
            fitted heads (source "fitted", mirrors included); None: every item
            equally likely. The bootstrap's fits of real photos are few next to
            the synthetic heads; this lets them count in a short fine-tune.
    """

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig | None = None
    batch_size: int = 32
    lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 10.0
    r1_interval: int = 16
    style_mixing_prob: float = 0.9
    mirror: bool = False
    steps: int | None = None
    total_kimg: float = 5000.0
    ema_kimg: float = 10.0
    ema_rampup: float | None = None
    seed: int = 0
    device: str = "cpu"
    checkpoint_interval: int = 2000
    keep_checkpoints: int = 3
    log_interval: int = 100
    d_warmup_steps: int = 0
    fitted_fraction: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.generator, GeneratorConfig):
            raise InputError(f"generator must be a GeneratorConfig, got {type(self.generator).__name__}")
        if self.generator.out_channels != 6:
            raise InputError(f"the UV GAN needs out_channels=6, got {self.generator.out_channels}")
        d = self.discriminator
        if d is not None and (not isinstance(d, DiscriminatorConfig) or d.resolution != self.generator.resolution
                              or d.in_channels != 6):
            raise InputError("discriminator must be None or a 6-channel DiscriminatorConfig at G's resolution")
        for name, lo in (("batch_size", 1), ("r1_interval", 1), ("seed", 0), ("checkpoint_interval", 0),
                         ("keep_checkpoints", 1), ("log_interval", 1), ("d_warmup_steps", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{name} must be an int >= {lo}, got {v!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise InputError(f"steps must be None or an int >= 1, got {self.steps!r}")
        for name in ("lr", "total_kimg", "ema_kimg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise InputError(f"{name} must be a positive number, got {v!r}")
        if isinstance(self.r1_gamma, bool) or not isinstance(self.r1_gamma, (int, float)) or not self.r1_gamma >= 0:
            raise InputError(f"r1_gamma must be >= 0, got {self.r1_gamma!r}")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise InputError(f"betas must be a tuple of two numbers in [0, 1), got {self.betas!r}")
        if not 0.0 <= self.style_mixing_prob <= 1.0:
            raise InputError(f"style_mixing_prob must be in [0, 1], got {self.style_mixing_prob!r}")
        f = self.fitted_fraction
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0):
            raise InputError(f"fitted_fraction must be None or in [0, 1], got {f!r}")
        if self.ema_rampup is not None and not self.ema_rampup > 0:
            raise InputError(f"ema_rampup must be None or > 0, got {self.ema_rampup!r}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InputError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    @property
    def d_config(self) -> DiscriminatorConfig:
        """The discriminators' config (explicit or matched to G)."""
        return self.discriminator or DiscriminatorConfig.for_generator(self.generator)

    @property
    def total_steps(self) -> int:
        """Training length in steps."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.total_kimg * 1000 / self.batch_size))

    def to_dict(self) -> dict:
        """Plain dict (JSON and checkpoint safe)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            InputError: unknown fields or invalid values.
        """
        return config_from_dict(cls, d, {"generator": GeneratorConfig, "discriminator": DiscriminatorConfig})


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_gan` produced.

    Attributes:
        generator_path: the exported EMA generator (kind "generator").
        generator_sha256: hex sha256 of that file (for the weights registry).
        checkpoint_path: the last training checkpoint.
        stats_path: ``stats.jsonl``.
        steps: steps completed in total (including those before a resume).
        seconds: wall seconds of training in total (including before a resume).
        final_stats: the last ``stats.jsonl`` record.
    """

    generator_path: Path
    generator_sha256: str
    checkpoint_path: Path
    stats_path: Path
    steps: int
    seconds: float
    final_stats: dict


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------




class _Stats(IntervalStats):
    """Sums over the current log interval (checkpointed, so resumed logs match)."""

    keys = ("loss_g", "loss_d", "r1", "d_real_albedo", "d_real_position", "d_real_joint", "d_fake_albedo",
            "d_fake_position", "d_fake_joint")


def _generate(G: Generator, n: int, gen: torch.Generator, mixing_prob: float, device: torch.device,
              update_w_avg: bool) -> torch.Tensor:
    """Maps [n, 6, R, R] from fresh latents, with style mixing; draws a fixed number of randoms from ``gen``."""
    cfg = G.cfg
    z = torch.randn(n, cfg.z_dim, generator=gen).to(device)
    z2 = torch.randn(n, cfg.z_dim, generator=gen).to(device)
    mix = float(torch.rand((), generator=gen)) < mixing_prob
    cutoff = int(torch.randint(1, cfg.num_ws, (), generator=gen)) if cfg.num_ws > 1 else cfg.num_ws
    G.mapping.train(update_w_avg)  # train mode updates w_avg (StyleGAN2: only in the D pass)
    ws = G.mapping(z)  # [n, L, w_dim]
    if mix:
        G.mapping.eval()
        ws = mix_ws(ws, G.mapping(z2), cutoff)  # coarse from z, fine from z2
    return G.synthesis(ws)


def _real_pools(ds: UVDataset, fitted_fraction: float | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Item indices of the fitted and the other heads (mirrors included), when ``fitted_fraction`` is set."""
    if fitted_fraction is None:
        return None
    fitted = np.asarray(ds.sources) == "fitted"
    if ds.mirror:
        fitted = np.concatenate([fitted, fitted])
    if not fitted.any() or fitted.all():
        raise InputError(f"fitted_fraction needs fitted and synthetic heads; {ds.root} has "
                         f"{int(fitted.sum())} fitted of {len(fitted)}")
    return torch.from_numpy(np.flatnonzero(fitted)), torch.from_numpy(np.flatnonzero(~fitted))


def _draw_real(gen: torch.Generator, n: int, n_items: int, pools: tuple[torch.Tensor, torch.Tensor] | None,
               fitted_fraction: float | None) -> torch.Tensor:
    """Indices of one real batch: uniform over the set, or ``fitted_fraction`` of them from the fitted heads."""
    if pools is None:
        return torch.randint(n_items, (n,), generator=gen)
    fitted, other = pools
    pick = torch.rand(n, generator=gen) < fitted_fraction
    a = fitted[torch.randint(len(fitted), (n,), generator=gen)]
    b = other[torch.randint(len(other), (n,), generator=gen)]
    return torch.where(pick, a, b)


@torch.no_grad()
def _ema_update(G_ema: Generator, G: Generator, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))  # p_ema <- beta p_ema + (1 - beta) p
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)




def _check_resumable(saved: TrainConfig, cfg: TrainConfig) -> None:
    a, b = saved.to_dict(), cfg.to_dict()
    diff = sorted(k for k in a if k not in _RESUMABLE_CHANGES and a[k] != b[k])
    if diff:
        raise InputError(f"cannot resume: config differs from the checkpoint's in {diff} "
                         f"(only {sorted(_RESUMABLE_CHANGES)} may change)")


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def train_gan(
    dataset: str | os.PathLike | UVDataset,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    ict_dir: str | os.PathLike | None = None,
    time_limit_s: float | None = None,
    init_generator: str | os.PathLike | None = None,
) -> TrainResult:
    """Train G and the three discriminators; export the EMA generator (``avatarsdk train gan``).

    Args:
        dataset: a data set folder (``avatarsdk data build``) or a loaded
            :class:`UVDataset` (its ``cfg`` must match ``config.generator`` and
            its ``mirror`` ``config.mirror``).
        out_dir: run folder (created): checkpoints, ``stats.jsonl``,
            ``generator.pt``, ``training.json``, ``DATASHEET.md``.
        config: the run's configuration.
        resume: a checkpoint of this run to continue from (``latest_checkpoint(out_dir)``
            finds the newest); only ``steps``/``total_kimg``, intervals and
            ``device`` may differ from its config. A different data set is
            allowed (fine-tuning, as the paper's G0 -> G1) and logged.
        command: the command line to record in ``TRAIN_COMMAND.txt`` (None: not written).
        progress: optional ``callback(stage, fraction)``, called every step with
            stage "train" and steps done / total steps.
        ict_dir: ICT-FaceKit folder (only for the mirror tables).
        time_limit_s: stop early after this many seconds of this call (the
            step in progress finishes; a checkpoint and the generator are
            written as at the planned end, and a later ``resume`` continues).
            For fixed time slots on a lent GPU. None: no limit.
        init_generator: a generator file (kind "generator", e.g. a shipped
            ``generator.pt``) to start G and its EMA from, with fresh
            discriminators and optimisers: the bootstrap's G0 -> G1 when only
            G0's exported weights are at hand (not its training checkpoint).
            Its architecture must equal ``config.generator``; pair it with
            ``config.d_warmup_steps``. Not with ``resume``.

    Returns:
        :class:`TrainResult`.

    Raises:
        InputError: bad config or data set, CUDA requested but absent, or an
            incompatible ``resume`` config.
        WeightsError: the resume checkpoint is unreadable or not a training checkpoint.
        AvatarError: a loss became non-finite (training diverged).
    """
    if not isinstance(config, TrainConfig):
        raise InputError(f"config must be a TrainConfig, got {type(config).__name__}")
    cfg = config
    dev = training_device(cfg.device)
    if isinstance(dataset, UVDataset):
        ds = dataset
        if ds.cfg != cfg.generator or ds.mirror != cfg.mirror:
            raise InputError("the UVDataset's cfg / mirror do not match config.generator / config.mirror")
    else:
        ds = UVDataset(dataset, cfg.generator, mirror=cfg.mirror, ict_dir=ict_dir)
    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    stats_path = out / "stats.jsonl"

    if dev.type == "cuda":  # TF32 matmuls/convs and tuned conv kernels: ~2x on Ampere/Hopper
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    G = Generator(cfg.generator, seed=cfg.seed).to(dev)
    D = Discriminators(cfg.d_config, seed=cfg.seed + _D_SEED_OFFSET).to(dev)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    d_lr, d_betas = lazy_regularization_adam(cfg.lr, cfg.betas, cfg.r1_interval)
    opt_d = torch.optim.Adam(D.parameters(), lr=d_lr, betas=d_betas, eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed_before = 0, 0.0
    stats = _Stats()

    if resume is not None and init_generator is not None:
        raise InputError("give resume (a training checkpoint) or init_generator (a generator file), not both")
    if init_generator is not None:
        start = ckpt.load(init_generator, kind="generator").model
        if start.cfg != cfg.generator:
            raise InputError(f"{init_generator}: its architecture {start.cfg} differs from the run's {cfg.generator}")
        G.load_state_dict(start.state_dict(), strict=True)
        G_ema.load_state_dict(start.state_dict(), strict=True)
        log.info("G and its EMA start from %s; discriminators fresh", init_generator)
    if resume is not None:
        loaded = ckpt.load(resume, kind="generator")
        extra = loaded.extra
        if extra.get("train_format") != TRAIN_FORMAT:
            raise WeightsError(f"{resume}: not a training checkpoint (no train_format {TRAIN_FORMAT})")
        _check_resumable(TrainConfig.from_dict(extra["train_config"]), cfg)
        try:
            G.load_state_dict(extra["generator"], strict=True)
            D.load_state_dict(extra["discriminators"], strict=True)
            G_ema.load_state_dict(loaded.model.state_dict(), strict=True)
            opt_g.load_state_dict(extra["opt_g"])
            opt_d.load_state_dict(extra["opt_d"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"{resume}: training state does not match the config: {exc}") from exc
        gen.set_state(extra["rng_state"])
        step = int(extra["step"])
        elapsed_before = float(extra["seconds"])
        stats = _Stats(extra["stats"])
        if extra.get("dataset_fingerprint") != ds.fingerprint():
            log.warning("resuming %s on a different data set (fine-tuning): %s", resume, ds.root)
        # Drop log lines written after the checkpoint (and its partial end-of-run line).
        kept = [r for r in read_stats(stats_path) if r["step"] < step or (r["step"] == step and not r["partial"])]
        atomic_write_bytes(stats_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        log.info("resumed from %s at step %d", resume, step)
    elif stats_path.exists():
        stats_path.unlink()  # a fresh run starts a fresh log

    total = cfg.total_steps
    if step > total:
        raise InputError(f"checkpoint is at step {step}, beyond the requested {total} steps")
    bs = cfg.batch_size
    n_items = len(ds)
    pools = _real_pools(ds, cfg.fitted_fraction)
    dset_fingerprint = ds.fingerprint()
    t_start = time.perf_counter()
    t_interval = t_start
    last_record: dict = {}
    last_ckpt: Path | None = Path(resume) if resume is not None else None

    def save_checkpoint() -> Path:
        extra = {
            "train_format": TRAIN_FORMAT,
            "train_config": cfg.to_dict(),
            "step": step,
            "seconds": elapsed_before + time.perf_counter() - t_start,
            "generator": cpu_state(G.state_dict()),
            "discriminators": cpu_state(D.state_dict()),
            "discriminator_config": dataclasses.asdict(cfg.d_config),
            "opt_g": cpu_state(opt_g.state_dict()),
            "opt_d": cpu_state(opt_d.state_dict()),
            "rng_state": gen.get_state(),
            "stats": stats.state(),
            "dataset_fingerprint": dset_fingerprint,
            "dataset_root": str(ds.root),
        }
        path = ck_dir / f"step-{step:08d}.pt"
        ckpt.save(path, G_ema, extra=extra)
        for old in sorted(ck_dir.glob("step-*.pt"))[:-cfg.keep_checkpoints]:
            old.unlink()
        return path

    def write_log(partial: bool) -> dict:
        nonlocal t_interval
        now = time.perf_counter()
        secs = now - t_interval
        rec = {"step": step, "kimg": round(step * bs / 1000, 4), **stats.means(),
               "seconds": round(secs, 4), "total_seconds": round(elapsed_before + now - t_start, 3),
               "samples_per_s": round(stats.steps * bs / max(secs, 1e-9), 3),
               "w_avg_norm": float(G.mapping.w_avg.norm()), "partial": partial}
        with open(stats_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        t_interval = now
        return rec

    while step < total:
        step += 1
        # --- G: non-saturating loss on fresh fakes (D frozen) --------------------------
        G.requires_grad_(True)
        D.requires_grad_(False)
        fake = _generate(G, bs, gen, cfg.style_mixing_prob, dev, update_w_avg=False)
        if step > cfg.d_warmup_steps:
            loss_g = g_nonsaturating_loss(D(fake))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        else:  # D warm-up: the same random draws as a normal step, no G update
            with torch.no_grad():
                loss_g = g_nonsaturating_loss(D(fake))
        # --- D: logistic loss on real vs new fakes -------------------------------------
        G.requires_grad_(False)
        D.requires_grad_(True)
        with torch.no_grad():
            fake = _generate(G, bs, gen, cfg.style_mixing_prob, dev, update_w_avg=True)
        idx = _draw_real(gen, bs, n_items, pools, cfg.fitted_fraction)
        real = ds.batch(idx, device=dev)
        real_logits, fake_logits = D(real), D(fake)
        loss_d = d_logistic_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # --- lazy R1 on the same real batch ----------------------------------------------
        r1 = None
        if cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
            real_r = real.detach().requires_grad_(True)
            r1 = r1_penalty(real_r, D(real_r))
            opt_d.zero_grad(set_to_none=True)
            (r1 * (0.5 * cfg.r1_gamma * cfg.r1_interval)).backward()  # = r1_loss(D, real, gamma, interval)
            opt_d.step()
        # --- EMA --------------------------------------------------------------------------
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, step * bs * cfg.ema_rampup)
        _ema_update(G_ema, G, 0.5 ** (bs / max(ema_nimg, 1e-8)))

        values = {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach())}
        if r1 is not None:
            values["r1"] = float(r1.detach())
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise AvatarError(f"training diverged at step {step}: non-finite {bad} (last checkpoint: {last_ckpt})")
        for k, v in values.items():
            stats.add(k, v)
        for name, rl, fl in zip(Discriminators.names, real_logits, fake_logits):
            stats.add(f"d_real_{name}", float(rl.detach().mean()))
            stats.add(f"d_fake_{name}", float(fl.detach().mean()))
        stats.steps += 1

        final = step == total
        if time_limit_s is not None and time.perf_counter() - t_start >= time_limit_s and not final:
            log.info("time limit of %.0f s reached at step %d of %d", time_limit_s, step, total)
            final, total = True, step
        if step % cfg.log_interval == 0 or final:
            last_record = write_log(partial=step % cfg.log_interval != 0)
            stats = _Stats() if step % cfg.log_interval == 0 else stats
        if (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0) or final:
            last_ckpt = save_checkpoint()
        if progress is not None:
            progress("train", step / total)

    if not last_record:  # resumed at the end: nothing new to log
        records = read_stats(stats_path)
        last_record = records[-1] if records else {}
    if last_ckpt is None or not last_ckpt.exists():
        last_ckpt = save_checkpoint()
    seconds = elapsed_before + time.perf_counter() - t_start

    g_path = out / "generator.pt"
    g_sha = ckpt.save(g_path, copy.deepcopy(G_ema).cpu())
    if command is not None:
        atomic_write_bytes(out / "TRAIN_COMMAND.txt", (command.rstrip("\n") + "\n").encode())
    info = {
        "config": cfg.to_dict(),
        "steps": step,
        "kimg": round(step * bs / 1000, 3),
        "seconds": round(seconds, 2),
        "device": str(dev),
        "machine": machine_info(),
        "generator_sha256": g_sha,
        "dataset": {"root": str(ds.root), "fingerprint": dset_fingerprint, "count": ds.num_samples,
                    "mirror": ds.mirror},
        "final_stats": last_record,
        "command": command,
    }
    atomic_write_bytes(out / "training.json", (json.dumps(info, indent=2) + "\n").encode())
    write_datasheet(out / "DATASHEET.md", ds.manifest, info)
    return TrainResult(generator_path=g_path, generator_sha256=g_sha, checkpoint_path=last_ckpt,
                       stats_path=stats_path, steps=step, seconds=seconds, final_stats=last_record)


# ---------------------------------------------------------------------------
# Coverage / diversity
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """How a generated set sits among training samples, in a small feature space.

    Features (:func:`map_features`): each [6, R, R] map in network units
    (albedo 2a - 1; offsets in ``offset_scale_m`` units, 1 cm by default) is
    area-averaged to ``feature_size``^2 texels, texels outside the skin charts
    are zeroed, and the result is projected on the top ``pca_dim`` principal
    axes of the *training* features (no whitening), so Euclidean distances are
    those of low-passed maps restricted to the main modes of the data. All
    distances below are Euclidean in that space.

    Attributes:
        n_generated: generated samples used.
        n_training: training samples used.
        feature_dim: dimension of the feature space.
        gen_to_train_nn: mean over generated samples of the distance to the
            nearest training sample (precision-like: low = generated samples lie
            near real ones; ~0 = copies of training samples).
        train_to_gen_nn: mean over training samples of the distance to the
            nearest generated one (recall/coverage-like: high = modes of the
            data that G never produces).
        train_self_nn: mean distance from a training sample to its nearest
            *other* training sample: the scale the two figures above should be
            compared with (a perfect G at the same n gives both ~ this value).
        diversity_generated: mean pairwise distance within the generated set
            (collapse shows as a value far below ``diversity_training``).
        diversity_training: mean pairwise distance within the training set.
        precision: fraction of generated samples inside some training sample's
            k-NN ball (Kynkaanniemi et al. 2019, "Improved precision and recall").
        recall: fraction of training samples inside some generated sample's k-NN ball.
        k: neighbourhood size of precision / recall.
    """

    n_generated: int
    n_training: int
    feature_dim: int
    gen_to_train_nn: float
    train_to_gen_nn: float
    train_self_nn: float
    diversity_generated: float
    diversity_training: float
    precision: float
    recall: float
    k: int

    def to_json(self) -> dict:
        """Plain dict with rounded floats."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def map_features(maps: torch.Tensor, mask: torch.Tensor | None = None, feature_size: int = 16) -> torch.Tensor:
    """Flatten maps into coverage features: area-downsampled, outside-chart texels zeroed.

    Args:
        maps: [N, C, R, R] maps in network units.
        mask: [R, R] bool skin-chart texels (None: keep all).
        feature_size: side of the downsampled map (<= R).

    Returns:
        [N, C * feature_size^2] float32.
    """
    if maps.ndim != 4 or maps.shape[-1] != maps.shape[-2]:
        raise InputError(f"maps: expected [N, C, R, R], got {list(maps.shape)}")
    size = min(int(feature_size), maps.shape[-1])
    x = F.adaptive_avg_pool2d(maps.float(), size)  # [N, C, s, s]
    if mask is not None:
        m = F.adaptive_avg_pool2d(mask.float().to(x.device)[None, None], size)[0, 0] > 0.5  # [s, s]
        x = x * m
    return x.flatten(1)


def _mean_pairwise(x: torch.Tensor) -> float:
    n = x.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(x.double(), x.double())
    return float(d.sum() / (n * (n - 1)))


def coverage_from_features(generated: torch.Tensor, training: torch.Tensor, *, k: int = 3,
                           pca_dim: int | None = 64) -> Coverage:
    """Compare two feature sets (see :class:`Coverage` for what each number means).

    Args:
        generated: [Ng, D] features of generated samples.
        training: [Nt, D] features of training samples.
        k: neighbourhood size for precision / recall (clamped to the set sizes - 1).
        pca_dim: project both sets on the top principal axes of ``training``
            (at most Nt - 1); None or 0: raw features.

    Returns:
        :class:`Coverage`. A set compared with itself gives 0 nearest-neighbour
        distances and precision = recall = 1.

    Raises:
        InputError: shapes differ or a set has fewer than 2 samples.
    """
    if generated.ndim != 2 or training.ndim != 2 or generated.shape[1] != training.shape[1]:
        raise InputError(f"features must be [N, D] with the same D, got {list(generated.shape)}, "
                         f"{list(training.shape)}")
    if generated.shape[0] < 2 or training.shape[0] < 2:
        raise InputError("each set needs at least 2 samples")
    g, t = generated.double().cpu(), training.double().cpu()
    if pca_dim:
        mean = t.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(t - mean, full_matrices=False)
        axes = vh[: min(int(pca_dim), t.shape[0] - 1, vh.shape[0])].T  # [D, p]
        g, t = (g - mean) @ axes, (t - mean) @ axes
    d_gt = torch.cdist(g, t)  # [Ng, Nt]
    d_tt = torch.cdist(t, t)
    d_gg = torch.cdist(g, g)
    eye_t = torch.eye(len(t), dtype=torch.bool)
    eye_g = torch.eye(len(g), dtype=torch.bool)
    train_self = d_tt.masked_fill(eye_t, float("inf")).min(1).values
    kt = max(1, min(k, len(t) - 1))
    kg = max(1, min(k, len(g) - 1))
    # Radius of each sample's k-NN ball within its own set (self excluded).
    r_t = d_tt.masked_fill(eye_t, float("inf")).kthvalue(kt, dim=1).values  # [Nt]
    r_g = d_gg.masked_fill(eye_g, float("inf")).kthvalue(kg, dim=1).values  # [Ng]
    precision = (d_gt <= r_t[None, :]).any(1).double().mean()
    recall = (d_gt.T <= r_g[None, :]).any(1).double().mean()
    return Coverage(
        n_generated=int(len(g)), n_training=int(len(t)), feature_dim=int(g.shape[1]),
        gen_to_train_nn=float(d_gt.min(1).values.mean()), train_to_gen_nn=float(d_gt.min(0).values.mean()),
        train_self_nn=float(train_self.mean()), diversity_generated=_mean_pairwise(g),
        diversity_training=_mean_pairwise(t), precision=float(precision), recall=float(recall), k=kt,
    )


@torch.no_grad()
def coverage_stats(
    G: Generator,
    dataset: UVDataset,
    n: int = 256,
    *,
    seed: int = 0,
    truncation_psi: float = 1.0,
    feature_size: int = 16,
    pca_dim: int | None = 64,
    k: int = 3,
    batch_size: int = 32,
    device: str = "cpu",
) -> Coverage:
    """Coverage and diversity of G's samples against the training set (a cheap FID stand-in).

    Draws ``n`` latents (seeded) and ``n`` distinct training samples (seeded,
    unmirrored), maps both with :func:`map_features` (mask: the data set's
    chart texels) and compares them with :func:`coverage_from_features`.

    Args:
        G: the generator (e.g. ``checkpoint.load("generator.pt").model``).
        dataset: the training set (resolution must match G).
        n: samples per set (the training side is capped at the set size).
        seed: seeds the latents and the training subset.
        truncation_psi: truncation of the generated latents (1: none).
        feature_size: side of the downsampled maps.
        pca_dim: principal axes kept (None: raw features).
        k: neighbourhood size for precision / recall.
        batch_size: generator batch.
        device: where G runs.

    Returns:
        :class:`Coverage`.

    Raises:
        InputError: resolution mismatch or n < 2.
    """
    if G.cfg.resolution != dataset.resolution:
        raise InputError(f"G resolution {G.cfg.resolution} != data set resolution {dataset.resolution}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InputError(f"n must be an int >= 2, got {n!r}")
    dev = training_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    was_training = G.training
    G = G.to(dev).eval()
    chunks = []
    for a in range(0, n, batch_size):
        z = sample_z(min(batch_size, n - a), G.cfg.z_dim, gen, device=dev)
        chunks.append(G(z, truncation_psi).float().cpu())
    G.train(was_training)
    fake = torch.cat(chunks)
    nt = min(n, dataset.num_samples)
    idx = torch.randperm(dataset.num_samples, generator=gen)[:nt]
    real = dataset.batch(idx)
    mask = dataset.chart_mask()
    return coverage_from_features(map_features(fake, mask, feature_size), map_features(real, mask, feature_size),
                                  k=k, pca_dim=pca_dim)
