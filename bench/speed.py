"""Speed benchmark: mmjepa against its peers, in one process, on one identical configuration.

Peers: the I-JEPA of the PyPI package ``lightly`` (training step) and ``transformers``' ``IJepaModel``
(frozen-encoder inference). mmjepa is timed twice: with its default ``attention_backend="auto"``
(row ``mmjepa`` / ``mmjepa_encoder``, column ``attn`` says which kernel that resolved to) and with
the other attention kernel (``(sdpa)`` or ``(matmul attention)``), so both kernels are measured in
the same run under the same conditions.

Design decisions, for numbers that can be trusted on a shared machine:

- Every implementation is timed in the same process; within each round the implementations
  alternate call by call (A B C A B C ..., the order rotating between rounds), so machine noise
  hits all of them alike.
- Everything is measured once per thread count of ``--threads`` (default ``1,0``: one thread, then
  torch's default); the results are nested by thread count (``runs["1"]``, ``runs["16"]`` ...). The
  headline keys (``train_speedup_fp32`` ...) are those at the default thread count, the
  ``*_1thread`` keys those at one thread.
- Each round records its wall time, the process's CPU time and the run-queue wait of the process's
  threads (``/proc/self/task/*/schedstat``, where readable). A round is *disturbed* when the threads
  waited for a core more than 5% of its wall time, or its CPU time per wall second fell below 0.85 x
  the expected level (the thread count on one thread; with several threads the best round of the
  same group, as the serial parts of a step keep some threads idle even on a quiet machine).
  Medians are taken over the undisturbed rounds (over all when fewer than 3 are undisturbed), with
  the min-max of the same rounds and the number of disturbed rounds beside them.
- Throughput is in samples per wall-clock second (the headline) and per CPU-second of the process
  (a cross-check, less sensitive to other processes taking the cores); speedups also as medians of
  per-round ratios. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` and related
  to a matmul peak measured after every timed round (MFU = counted FLOPs per step x steps/s /
  median peak of the rounds used).
- bf16 (CPU autocast) is only meaningful where the CPU multiplies bf16 natively (AVX512-BF16, AMX,
  Arm BF16). The bench measures it first (bf16 matmul at least half as fast as fp32 on one
  thread); without it, bf16 is emulated an order of magnitude slower than fp32, so it is skipped
  with one log line, ``"bf16_native": false`` and null bf16 keys (``--force-bf16`` runs it anyway).

Run (the record; leave the machine otherwise idle)::

    mmjepa bench speed --json bench-speed.json

Notes on the peers (the differences that remain by construction):

- lightly's ``IJEPABackbone`` is a torchvision ViT: it prepends a class token (the target encoder
  therefore sees 145 tokens instead of 144, and lightly's mask indices are offset against it) and
  its position embedding is learned instead of fixed. Its ``IJEPAPredictor`` takes the encoder
  width from ``mlp_dim``, so the predictor's blocks are rebuilt here with width 96 and MLP 384 to
  match the configuration. Optimizer, EMA and loss are written as in lightly's
  ``examples/pytorch/ijepa.py`` (``torch.optim.AdamW`` with its defaults, a per-parameter EMA loop,
  ``SmoothL1Loss``).
- By default both training implementations consume the *same* mask index tensors (drawn by
  ``mmjepa.masking.MultiBlock2D``), so they do identical work; ``--masks own`` feeds lightly the
  masks of its own ``IJEPAMaskCollator`` instead (the same algorithm; the mean token counts of both
  are reported).
- Peak memory is the peak of live tensor memory during one step, from the PyTorch profiler's
  memory timeline (``profile_memory=True``), over what was allocated before the step, plus the
  bytes of parameters, gradients and optimizer state.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch import nn

from mmjepa.engine.optim import build_optimizer
from mmjepa.layers import resolve_attention_backend
from mmjepa.masking import MultiBlock2D
from mmjepa.models import MMJepaConfig, MMJepaModel, compile_model


@dataclass
class BenchConfig:
    image_size: int = 96
    patch_size: int = 8
    width: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    pred_width: int = 96
    pred_depth: int = 3
    pred_heads: int = 3
    batch_size: int = 32
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


TINY = dict(image_size=64, patch_size=8, width=32, depth=2, heads=2, pred_width=16, pred_depth=1, pred_heads=2,
            batch_size=4)


# ----------------------------------------------------------------------------- inputs
def make_images(cfg: BenchConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=g)  # (B, 3, H, W)


def mmjepa_masks(cfg: BenchConfig, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of I-JEPA multi-block masks from mmjepa's ``MultiBlock2D``."""
    sampler = MultiBlock2D(grid=(cfg.grid, cfg.grid), num_targets=cfg.num_targets, target_scale=cfg.target_scale,
                           target_aspect=cfg.target_aspect, context_scale=cfg.context_scale)
    g = torch.Generator().manual_seed(seed)
    return [sampler(cfg.batch_size, g) for _ in range(n)]


def lightly_masks(cfg: BenchConfig, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` batches from lightly's ``IJEPAMaskCollator`` (same scales), in mmjepa's mask-set layout."""
    from lightly.data.ijepa_collate import IJEPAMaskCollator

    coll = IJEPAMaskCollator(input_size=cfg.image_size, patch_size=cfg.patch_size, enc_mask_scale=cfg.context_scale,
                             pred_mask_scale=cfg.target_scale, aspect_ratio=cfg.target_aspect, nenc=1,
                             npred=cfg.num_targets)
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # lightly places blocks with the global generator
        for _ in range(n):
            _, enc, pred = coll([torch.zeros(1)] * cfg.batch_size)
            out.append({"context": enc[0], "target": torch.stack(pred, 1)})  # (B, Kc), (B, M, Kt)
    return out


def mask_stats(masks: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    return {"context_tokens": statistics.mean(m["context"].shape[1] for m in masks),
            "target_tokens_per_block": statistics.mean(m["target"].shape[2] for m in masks)}


# ----------------------------------------------------------------------------- mmjepa
def build_mmjepa(cfg: BenchConfig, compile: bool = False, attention_backend: str = "auto"):
    torch.manual_seed(0)
    mcfg = MMJepaConfig(modalities={"image": {"image_size": cfg.image_size, "patch_size": cfg.patch_size}},
                        hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                        mlp_ratio=cfg.mlp_ratio, predictor_hidden_size=cfg.pred_width,
                        predictor_num_hidden_layers=cfg.pred_depth, predictor_num_attention_heads=cfg.pred_heads,
                        attention_backend=attention_backend)
    model = MMJepaModel(mcfg).train()
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.04)
    if compile:
        compile_model(model)
    return model, opt


def mmjepa_train_step(model, opt, images: torch.Tensor, masks: dict[str, torch.Tensor], amp) -> torch.Tensor:
    with amp():
        out = model(pixel_values=images, masks={"image": masks})
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.update_target(0.998)
    return out.loss.detach()


# ----------------------------------------------------------------------------- lightly
class LightlyIJEPA(nn.Module):
    """lightly 1.6's I-JEPA, assembled as in lightly's ``examples/pytorch/ijepa.py``."""

    def __init__(self, cfg: BenchConfig):
        super().__init__()
        from lightly.models.modules import ijepa
        from torchvision.models import vision_transformer

        self.encoder = ijepa.IJEPABackbone(image_size=cfg.image_size, patch_size=cfg.patch_size,
                                           num_layers=cfg.depth, num_heads=cfg.heads, hidden_dim=cfg.width,
                                           mlp_dim=int(cfg.width * cfg.mlp_ratio))
        n = cfg.num_patches
        # ``mlp_dim`` of IJEPAPredictor is the *encoder* width (predictor_embed / predictor_proj) and
        # would also be the blocks' MLP width: build the blocks separately with MLP = 4 x 96.
        self.predictor = ijepa.IJEPAPredictor(seq_length=n + 1, num_layers=cfg.pred_depth, num_heads=cfg.pred_heads,
                                              hidden_dim=cfg.pred_width, predictor_embed_dim=cfg.pred_width,
                                              num_patches=n, mlp_dim=cfg.width, dropout=0.0, attention_dropout=0.0)
        blocks = vision_transformer.Encoder(n + 1, cfg.pred_depth, cfg.pred_heads, cfg.pred_width,
                                            int(cfg.pred_width * cfg.mlp_ratio), 0.0, 0.0)
        self.predictor.layers = blocks.layers
        self.target_encoder = copy.deepcopy(self.encoder)

    def forward(self, imgs, masks_enc: list[torch.Tensor], masks_pred: list[torch.Tensor]):
        z = self.predictor(self.encoder(imgs, masks_enc), masks_enc, masks_pred)
        with torch.no_grad():
            h = self.target_encoder(imgs)
            h = F.layer_norm(h, (h.size(-1),))
            from lightly.models import utils

            h = utils.apply_masks(h, masks_pred)
            h = utils.repeat_interleave_batch(h, len(imgs), repeat=len(masks_enc))
        return z, h

    @torch.no_grad()
    def update_target_encoder(self, m: float) -> None:
        for param_q, param_k in zip(self.encoder.parameters(), self.target_encoder.parameters()):
            param_k.data.mul_(m).add_((1.0 - m) * param_q.detach().data)


def build_lightly(cfg: BenchConfig):
    torch.manual_seed(0)
    model = LightlyIJEPA(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt


def lightly_train_step(model, opt, images, masks: dict[str, torch.Tensor], amp) -> torch.Tensor:
    masks_enc = [masks["context"]]
    masks_pred = list(masks["target"].unbind(1))
    with amp():
        z, h = model(images, masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.update_target_encoder(0.998)
    return loss.detach()


# ----------------------------------------------------------------------------- inference
def build_hf_ijepa(cfg: BenchConfig):
    from transformers import IJepaConfig, IJepaModel

    torch.manual_seed(0)
    hcfg = IJepaConfig(hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                       intermediate_size=int(cfg.width * cfg.mlp_ratio), image_size=cfg.image_size,
                       patch_size=cfg.patch_size, layer_norm_eps=1e-6)
    model = IJepaModel._from_config(hcfg, attn_implementation="sdpa").eval()
    assert model.config._attn_implementation == "sdpa"
    return model


def hf_infer(model, images, amp) -> torch.Tensor:
    with torch.inference_mode(), amp():
        return model(pixel_values=images).last_hidden_state


def mmjepa_infer(model, images, amp) -> torch.Tensor:
    with torch.inference_mode(), amp():
        return model.encode(pixel_values=images)["image"]


# ----------------------------------------------------------------------------- measuring
def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Measured matmul FLOP/s for (n x n) @ (n x n) in ``dtype`` (2 FLOPs per multiply-add), from the
    fastest of ``repeats`` runs (a peak: noise from other processes only ever slows a run down)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()``. ``FlopCounterMode`` has no formula for SDPA's CPU kernels, so they are
    added here as model FLOPs: the two attention matmuls forward, their four gradient matmuls
    backward (no recomputation counted), which is what matmul attention counts too."""
    aten = torch.ops.aten
    cpu_sdpa = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, **kwargs: flop_counter.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *args, **kwargs: 2 * flop_counter.sdpa_flop_count(q, k, v),
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_step_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes of live CPU tensors allocated during ``fn()`` above the level before it, read from
    the profiler's memory timeline."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    timeline = MemoryProfileTimeline(prof._memory_profile())
    times, sizes = timeline._coalesce_timeline("cpu")
    totals = [sum(s) for s in sizes]
    return int(max(totals) - totals[0]) if totals else 0


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer | None) -> int:
    """Bytes of parameters + buffers (+ gradients and optimizer state of trainable parameters)."""
    n = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    if opt is not None:
        for group in opt.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    n += p.numel() * p.element_size()  # gradient
                    n += sum(v.numel() * v.element_size() for v in opt.state.get(p, {}).values()
                             if isinstance(v, torch.Tensor))
    return n


def amp_ctx(precision: str):
    if precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


# ----------------------------------------------------------------------------- the machine
def cpuinfo_field(*names: str) -> str | None:
    """The first ``/proc/cpuinfo`` line starting with one of ``names``, after its colon (None elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo_field("model name", "Model", "Hardware") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags", "Features") or "").split())


def bf16_check(n: int = 512) -> dict[str, Any]:
    """Whether this CPU multiplies bf16 natively, decided by measurement: the bf16 matmul peak at
    least half the fp32 one (on one thread, n x n x n). Emulated bf16 (e.g. AVX2 only) runs an
    order of magnitude slower than fp32, and nothing about bf16 speed could be learnt from it. The
    CPU's bf16 flags and oneDNN's own verdict are recorded beside it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32, bf16 = matmul_peak(torch.float32, n, repeats=3), matmul_peak(torch.bfloat16, n, repeats=3)
    finally:
        torch.set_num_threads(threads)
    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx") or f == "sve")
    mkldnn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return {"native": bf16 >= 0.5 * fp32, "probe_size": n, "probe_fp32_flops": fp32, "probe_bf16_flops": bf16,
            "bf16_over_fp32": bf16 / fp32, "cpu_flags": flags,
            "mkldnn_bf16_supported": bool(mkldnn()) if mkldnn is not None else None}


# ----------------------------------------------------------------------------- timing
def runqueue_wait_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a core (the second field
    of ``/proc/self/task/*/schedstat``, summed), or None where that is not readable."""
    total, seen = 0, False
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
                seen = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if seen else None


# A round is *disturbed* when another process demonstrably took cores from it: its threads waited
# in the run queue for more than WAIT_LIMIT of the round's wall time (summed over threads), or its
# CPU time per wall second fell below CPU_LIMIT x the expected level: the thread count on one
# thread; with several threads the best round of the same group (how busy an undisturbed round
# keeps the threads depends on the model's serial parts, so it is measured, not assumed).
WAIT_LIMIT = 0.05
CPU_LIMIT = 0.85


@dataclass
class Impl:
    name: str
    kind: str  # "train" | "infer"
    precision: str
    run: Callable[[int], Any]  # run(i): one step / forward on mask batch i
    flops: Callable[[], int]
    memory: Callable[[], int]
    static_bytes: Callable[[], int]
    compile_s: float = 0.0
    attention: str = ""  # the kernel its attention layers run ("sdpa" | "matmul"); "" for the peers


def time_interleaved(impls: list[Impl], steps: int, repeats: int, warmup: int, batch: int,
                     log: Callable[[str], None], peak: Callable[[], float] | None = None) -> dict[str, Any]:
    """Run every implementation ``warmup`` times, then ``repeats`` rounds; in a round each
    implementation runs ``steps`` calls, interleaved call by call (A B C A B C ...) in an order that
    rotates from round to round, so that noise from other processes hits all alike.

    Returns ``rates`` / ``cpu_rates`` (implementation -> per round samples per wall-second and per
    CPU-second of this process), ``rounds`` (per round: wall, CPU and run-queue seconds of the
    implementations' calls, and whether it was disturbed, see ``WAIT_LIMIT``) and, with ``peak``,
    ``peaks``: the matmul peak measured after every round, so the MFU is taken against the machine
    as it was while the implementations ran."""
    for impl in impls:
        for i in range(warmup):
            impl.run(i)
    threads = torch.get_num_threads()
    rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
    cpu_rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
    rounds: list[dict[str, Any]] = []
    peaks: list[float] = []
    for r in range(repeats):
        order = impls[r % len(impls):] + impls[: r % len(impls)]
        wall = {impl.name: 0.0 for impl in impls}
        cpu = {impl.name: 0.0 for impl in impls}
        gc.collect()
        w0 = runqueue_wait_s()
        for i in range(steps):
            for impl in order:
                t0, c0 = time.perf_counter(), time.process_time()
                impl.run(i)
                wall[impl.name] += time.perf_counter() - t0
                cpu[impl.name] += time.process_time() - c0
        w1 = runqueue_wait_s()
        for impl in impls:
            rates[impl.name].append(steps * batch / wall[impl.name])
            cpu_rates[impl.name].append(steps * batch / cpu[impl.name])
        rnd = {"wall_s": sum(wall.values()), "cpu_s": sum(cpu.values()),
               "runqueue_wait_s": w1 - w0 if w0 is not None and w1 is not None else None}
        rnd["cpu_per_wall"] = rnd["cpu_s"] / rnd["wall_s"]
        rounds.append(rnd)
        if peak is not None:
            peaks.append(peak())
        wait = f"{rnd['runqueue_wait_s']:.2f}" if rnd["runqueue_wait_s"] is not None else "n/a"
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
            + f" samples/s; CPU/wall {rnd['cpu_per_wall']:.2f}, run-queue wait {wait} s of {rnd['wall_s']:.2f} s"
            + (f"; matmul peak {peaks[-1] / 1e9:.1f} GFLOP/s" if peaks else ""))
    cpu_ref = threads if threads == 1 else max(r["cpu_per_wall"] for r in rounds)
    for rnd in rounds:
        waited = rnd["runqueue_wait_s"] is not None and rnd["runqueue_wait_s"] > WAIT_LIMIT * rnd["wall_s"]
        rnd["disturbed"] = bool(waited or rnd["cpu_per_wall"] < CPU_LIMIT * cpu_ref)
    return {"rates": rates, "cpu_rates": cpu_rates, "rounds": rounds, "peaks": peaks}


def used_rounds(rounds: list[dict[str, Any]]) -> list[int]:
    """Indices of the rounds the medians are taken over: the undisturbed ones, or all of them when
    fewer than 3 are undisturbed."""
    quiet = [i for i, r in enumerate(rounds) if not r["disturbed"]]
    return quiet if len(quiet) >= 3 else list(range(len(rounds)))


def summarize(values: list[float], idx: list[int]) -> dict[str, float]:
    v = [values[i] for i in idx]
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


# ----------------------------------------------------------------------------- the run
def bench_impls(cfg: BenchConfig, prec: str, skip: set[str], args, images, masks, lmasks) -> list[Impl]:
    """The implementations timed in one precision: mmjepa with ``attention_backend="auto"`` (the
    default), mmjepa with the other attention kernel, and the peer; for training and inference."""
    amp = amp_ctx(prec)
    n_masks = len(masks)
    probe = torch.zeros(1, 1, cfg.num_patches, 1, dtype=torch.bfloat16 if prec == "bf16" else torch.float32)
    auto = resolve_attention_backend(probe, probe, "auto")  # what "auto" runs for this configuration
    other = "matmul" if auto == "sdpa" else "sdpa"
    label = {"matmul": "matmul attention", "sdpa": "sdpa"}
    impls: list[Impl] = []
    if "train" not in skip:
        for name, backend in (("mmjepa", "auto"), (f"mmjepa ({label[other]})", other)):
            mm, mopt = build_mmjepa(cfg, attention_backend=backend)
            impls.append(Impl(name, "train", prec,
                              lambda i, m=mm, o=mopt: mmjepa_train_step(m, o, images, masks[i % n_masks], amp),
                              lambda m=mm, o=mopt: count_flops(lambda: mmjepa_train_step(m, o, images, masks[0], amp)),
                              lambda m=mm, o=mopt: peak_step_memory(lambda: mmjepa_train_step(m, o, images, masks[0], amp)),
                              lambda m=mm, o=mopt: state_bytes(m, o), attention=auto if backend == "auto" else backend))
        lm, lopt = build_lightly(cfg)
        impls.append(Impl("lightly", "train", prec,
                          lambda i, m=lm, o=lopt: lightly_train_step(m, o, images, lmasks[i % len(lmasks)], amp),
                          lambda m=lm, o=lopt: count_flops(lambda: lightly_train_step(m, o, images, lmasks[0], amp)),
                          lambda m=lm, o=lopt: peak_step_memory(lambda: lightly_train_step(m, o, images, lmasks[0], amp)),
                          lambda m=lm, o=lopt: state_bytes(m, o)))
        if args.compile:
            cm, copt = build_mmjepa(cfg, compile=True)
            t0 = time.perf_counter()
            for i in range(n_masks):  # compile (and any recompiles for the pool's shapes)
                mmjepa_train_step(cm, copt, images, masks[i], amp)
            impls.append(Impl("mmjepa_compiled", "train", prec,
                              lambda i, m=cm, o=copt: mmjepa_train_step(m, o, images, masks[i % n_masks], amp),
                              impls[0].flops,
                              lambda m=cm, o=copt: peak_step_memory(lambda: mmjepa_train_step(m, o, images, masks[0], amp)),
                              lambda m=cm, o=copt: state_bytes(m, o), time.perf_counter() - t0, attention=auto))
    if "infer" not in skip:
        for name, backend in (("mmjepa_encoder", "auto"), (f"mmjepa_encoder ({label[other]})", other)):
            mm_inf, _ = build_mmjepa(cfg, attention_backend=backend)
            mm_inf.eval()
            impls.append(Impl(name, "infer", prec, lambda i, m=mm_inf: mmjepa_infer(m, images, amp),
                              lambda m=mm_inf: count_flops(lambda: mmjepa_infer(m, images, amp)),
                              lambda m=mm_inf: peak_step_memory(lambda: mmjepa_infer(m, images, amp)),
                              lambda m=mm_inf: state_bytes(m.target_encoders, None),
                              attention=auto if backend == "auto" else backend))
        hf = build_hf_ijepa(cfg)
        impls.append(Impl("hf_IJepaModel", "infer", prec, lambda i, m=hf: hf_infer(m, images, amp),
                          lambda m=hf: count_flops(lambda: hf_infer(m, images, amp)),
                          lambda m=hf: peak_step_memory(lambda: hf_infer(m, images, amp)),
                          lambda m=hf: state_bytes(m, None)))
        if args.compile:
            cinf, _ = build_mmjepa(cfg, compile=True)
            cinf.eval()
            t0 = time.perf_counter()
            mmjepa_infer(cinf, images, amp)
            base = next(i for i in impls if i.name == "mmjepa_encoder")
            impls.append(Impl("mmjepa_encoder_compiled", "infer", prec, lambda i, m=cinf: mmjepa_infer(m, images, amp),
                              base.flops, lambda m=cinf: peak_step_memory(lambda: mmjepa_infer(m, images, amp)),
                              lambda m=cinf: state_bytes(m.target_encoders, None), time.perf_counter() - t0,
                              attention=auto))
    return impls


PEERS = {"train": "lightly", "infer": "hf_IJepaModel"}
OURS = {"train": "mmjepa", "infer": "mmjepa_encoder"}


def run(args: argparse.Namespace) -> int:
    """``mmjepa bench speed`` with parsed arguments (see ``mmjepa_cli``)."""
    cfg = BenchConfig(**(TINY if args.tiny else {}))
    for f in ("image_size", "patch_size", "width", "depth", "heads", "pred_width", "pred_depth", "pred_heads",
              "batch_size", "num_targets"):
        if getattr(args, f) is not None:
            setattr(cfg, f, getattr(args, f))
    default_threads = torch.get_num_threads()
    threads = []
    for t in str(args.threads).split(","):
        n = int(t) if t.strip() else 0
        n = n if n > 0 else default_threads
        if n not in threads:
            threads.append(n)
    skip = set(filter(None, args.skip.split(",")))
    precisions = [s for s in args.precision.split(",") if s]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    bf16 = bf16_check()
    if "bf16" in precisions and not bf16["native"] and not args.force_bf16:
        precisions.remove("bf16")
        log(f"bf16 skipped: this CPU has no native bf16 matmul (bf16 {bf16['probe_bf16_flops'] / 1e9:.1f} vs fp32 "
            f"{bf16['probe_fp32_flops'] / 1e9:.1f} GFLOP/s on one thread), so its bf16 timings would say nothing; "
            "--force-bf16 runs it anyway")

    images = make_images(cfg)
    n_masks = max(args.steps, args.warmup)
    masks = mmjepa_masks(cfg, n_masks, seed=0)
    own = lightly_masks(cfg, n_masks, seed=0)
    lmasks = own if args.masks == "own" else masks
    # the two collators implement the same algorithm: compare their token counts over many batches
    collator_check = {"batches": args.check_batches,
                      "mmjepa_MultiBlock2D": mask_stats(mmjepa_masks(cfg, args.check_batches, seed=1)),
                      "lightly_IJEPAMaskCollator": mask_stats(lightly_masks(cfg, args.check_batches, seed=1))}

    result: dict[str, Any] = {
        "config": asdict(cfg), "torch": torch.__version__,
        "machine": {"cpu": cpu_model(), "arch": platform.machine(), "logical_cpus": os.cpu_count(),
                    "torch": torch.__version__, "default_threads": default_threads,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "threads": threads, "default_threads": default_threads,
        "bf16_native": bf16["native"], "bf16_check": bf16,
        "precisions": precisions,
        "repeats": args.repeats, "warmup": args.warmup, "steps_per_round": args.steps, "masks": args.masks,
        "disturbed_round_rule": {"runqueue_wait_over_wall": WAIT_LIMIT, "cpu_per_wall_under": CPU_LIMIT},
        "mask_tokens": {"mmjepa": mask_stats(masks), "lightly": mask_stats(lmasks)},
        "collator_check": collator_check,
        "runs": {},
    }
    log(f"config {asdict(cfg)}; threads {threads} (default {default_threads}); CPU {result['machine']['cpu']}")
    for nt in threads:
        torch.set_num_threads(nt)
        res: dict[str, Any] = {"peak_flops": {}, "peak_flops_during": {}, "train": {}, "infer": {}, "rounds": {}}
        result["runs"][str(nt)] = res
        for prec in precisions:
            dtype = torch.bfloat16 if prec == "bf16" else torch.float32
            res["peak_flops"][prec] = matmul_peak(dtype, args.peak_size)
            log(f"[{nt} threads] matmul peak {prec}: {res['peak_flops'][prec] / 1e9:.1f} GFLOP/s")
        for prec in precisions:
            dtype = torch.bfloat16 if prec == "bf16" else torch.float32
            impls = bench_impls(cfg, prec, skip, args, images, masks, lmasks)
            log(f"[{nt} threads, {prec}] timing {', '.join(i.name for i in impls)}")
            for kind in ("train", "infer"):
                group = [i for i in impls if i.kind == kind]
                if not group:
                    continue
                t = time_interleaved(group, args.steps, args.repeats, args.warmup, cfg.batch_size, log,
                                     peak=lambda: matmul_peak(dtype, args.peak_size, repeats=3))
                idx = used_rounds(t["rounds"])
                disturbed = sum(r["disturbed"] for r in t["rounds"])
                res["rounds"].setdefault(prec, {})[kind] = {"rounds": t["rounds"], "disturbed": disturbed,
                                                            "used": idx}
                round_peak = summarize(t["peaks"], idx)["median"]
                res["peak_flops_during"].setdefault(prec, {})[kind] = round_peak
                base = next(i for i in group if i.name == PEERS[kind])
                for impl in group:
                    s = summarize(t["rates"][impl.name], idx)
                    entry: dict[str, Any] = {
                        "samples_per_s": s["median"], "samples_per_s_min": s["min"], "samples_per_s_max": s["max"],
                        "samples_per_s_all": t["rates"][impl.name],
                        "samples_per_cpu_s": summarize(t["cpu_rates"][impl.name], idx)["median"],
                        "samples_per_cpu_s_all": t["cpu_rates"][impl.name],
                        "rounds_used": len(idx), "rounds_disturbed": disturbed}
                    if impl.attention:
                        entry["attention"] = impl.attention
                    if impl.compile_s:
                        entry["compile_s"] = impl.compile_s
                    if impl is not base:
                        entry["speedup_paired_rounds"] = statistics.median(
                            t["rates"][impl.name][i] / t["rates"][base.name][i] for i in idx)
                        entry["speedup_cpu_time"] = (entry["samples_per_cpu_s"]
                                                     / summarize(t["cpu_rates"][base.name], idx)["median"])
                    if "flops" not in skip:
                        entry["flops_per_step"] = impl.flops()
                        entry["achieved_flops"] = entry["flops_per_step"] * entry["samples_per_s"] / cfg.batch_size
                        entry["mfu"] = entry["achieved_flops"] / round_peak
                    if "memory" not in skip:
                        entry["state_bytes"] = impl.static_bytes()
                        entry["step_peak_bytes"] = impl.memory()
                        entry["peak_bytes"] = entry["state_bytes"] + entry["step_peak_bytes"]
                    res[kind].setdefault(prec, {})[impl.name] = entry
            del impls
            gc.collect()
    torch.set_num_threads(default_threads)

    # headline figures: at torch's default thread count when measured (else the last count given),
    # and at one thread; null for a precision (or thread count) not run
    head = str(default_threads if default_threads in threads else threads[-1])
    for suffix, key in (("", head), ("_1thread", "1")):
        run_ = result["runs"].get(key)
        for kind in ("train", "infer"):
            for prec in ("fp32", "bf16"):
                impls = run_[kind].get(prec, {}) if run_ else {}
                ok = OURS[kind] in impls and PEERS[kind] in impls
                result[f"{kind}_speedup_{prec}{suffix}"] = (
                    impls[OURS[kind]]["samples_per_s"] / impls[PEERS[kind]]["samples_per_s"] if ok else None)
                compiled = f"{OURS[kind]}_compiled"
                if compiled in impls:
                    result[f"{kind}_speedup_compiled_{prec}{suffix}"] = (impls[compiled]["samples_per_s"]
                                                                         / impls[PEERS[kind]]["samples_per_s"])
    one = result["runs"].get("1")
    for prec in ("fp32", "bf16"):
        e = (one or {}).get("train", {}).get(prec, {}).get("mmjepa", {})
        result[f"train_mfu_{prec}_1thread"] = e.get("mfu")
    result["headline_threads"] = int(head)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        log(f"wrote {args.json}")
    return 0


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'thr':>3} {'part':5} {'prec':4} {'implementation':33} {'attn':6} {'samples/s':>9} {'min-max':>11} "
             f"{'per CPU-s':>9} {'GFLOP/step':>10} {'MFU':>4} {'peak MiB':>8} {'x peer':>6} {'x paired':>8} "
             f"{'x CPU-s':>7} {'quiet':>6}"]
    for nt, res in result["runs"].items():
        for kind in ("train", "infer"):
            for prec, impls in res[kind].items():
                base = impls[PEERS[kind]]
                for name, e in impls.items():
                    gf = f"{e['flops_per_step'] / 1e9:.2f}" if "flops_per_step" in e else "-"
                    mfu = f"{100 * e['mfu']:.0f}%" if "mfu" in e else "-"
                    mem = f"{e['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in e else "-"
                    spread = f"{e['samples_per_s_min']:.1f}-{e['samples_per_s_max']:.1f}"
                    ratio = f"{e['samples_per_s'] / base['samples_per_s']:.2f}"
                    pr = f"{e['speedup_paired_rounds']:.2f}" if "speedup_paired_rounds" in e else "-"
                    cr = f"{e['speedup_cpu_time']:.2f}" if "speedup_cpu_time" in e else "-"
                    rounds = f"{len(e['samples_per_s_all']) - e['rounds_disturbed']}/{len(e['samples_per_s_all'])}"
                    lines.append(f"{nt:>3} {kind:5} {prec:4} {name:33} {e.get('attention', '-'):6} "
                                 f"{e['samples_per_s']:9.1f} {spread:>11} {e['samples_per_cpu_s']:9.1f} {gf:>10} "
                                 f"{mfu:>4} {mem:>8} {ratio:>6} {pr:>8} {cr:>7} {rounds:>6}")
    lines.append("samples/s: median over the undisturbed rounds (all rounds when fewer than 3 were undisturbed); "
                 "min-max over the same rounds; quiet: undisturbed rounds / all")
    for nt, res in result["runs"].items():
        for prec, kinds in res["rounds"].items():
            for kind, r in kinds.items():
                if r["disturbed"]:
                    lines.append(f"{nt} threads {prec} {kind}: {r['disturbed']} of {len(r['rounds'])} rounds disturbed "
                                 "(other processes took cores)")
    for k, v in result.items():
        if ("speedup" in k or "_mfu_" in k) and v is not None:
            lines.append(f"{k}: {v:.2f}" + ("x" if "speedup" in k else ""))
    if result["bf16_native"] is False and "bf16" not in result["precisions"]:
        lines.append("bf16: skipped, this CPU has no native bf16 matmul (--force-bf16 runs it anyway)")
    for nt, res in result["runs"].items():
        for prec, v in res["peak_flops"].items():
            during = ", ".join(f"{k} {x / 1e9:.0f}" for k, x in res["peak_flops_during"].get(prec, {}).items())
            lines.append(f"{nt} threads: matmul peak {prec}: {v / 1e9:.0f} GFLOP/s at start; median of the rounds: "
                         f"{during} (MFU is taken against the latter)")
    return "\n".join(lines)
