"""Speed benchmark: mmjepa against its peers, in one process, on one identical configuration.

Peers: the I-JEPA of the PyPI package ``lightly`` (training step) and ``transformers``' ``IJepaModel``
(frozen-encoder inference). Every implementation is timed in the same process; within each round
the implementations alternate call by call (A B C A B C ..., the order rotating between rounds), so
machine noise hits all of them alike; after a warm-up the median over rounds is reported, in samples
per wall-clock second (the headline) and per CPU-second of the process (a cross-check that is less
sensitive to other processes taking the cores), with the speedups also as medians of per-round ratios. FLOPs are counted for all with
``torch.utils.flop_counter.FlopCounterMode`` and related to a matmul peak measured in every timed round
(model FLOP utilisation, MFU = counted FLOPs per step x steps/s / median peak of the rounds).

Run::

    mmjepa bench speed --json /tmp/speed_result.json

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
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmjepa.engine.optim import build_optimizer
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
def build_mmjepa(cfg: BenchConfig, compile: bool = False):
    torch.manual_seed(0)
    mcfg = MMJepaConfig(modalities={"image": {"image_size": cfg.image_size, "patch_size": cfg.patch_size}},
                        hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                        mlp_ratio=cfg.mlp_ratio, predictor_hidden_size=cfg.pred_width,
                        predictor_num_hidden_layers=cfg.pred_depth, predictor_num_attention_heads=cfg.pred_heads)
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
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
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


def time_interleaved(impls: list[Impl], steps: int, repeats: int, warmup: int, batch: int,
                     log: Callable[[str], None], peak: Callable[[], float] | None = None
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run every implementation ``warmup`` times, then ``repeats`` rounds; in a round each
    implementation runs ``steps`` calls, interleaved call by call (A B C A B C ...) in an order that
    rotates from round to round, so that noise from other processes hits all alike.

    Returns per implementation and round the throughput in samples per wall-clock second and in
    samples per CPU-second of this process (the latter is less sensitive to other processes taking
    the cores away). With ``peak`` the matmul peak is measured in every round too (key ``"_peak"``),
    so the MFU is taken against the machine as it was while the implementations ran."""
    for impl in impls:
        for i in range(warmup):
            impl.run(i)
    rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
    cpu_rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(repeats):
        order = impls[r % len(impls):] + impls[: r % len(impls)]
        wall = {impl.name: 0.0 for impl in impls}
        cpu = {impl.name: 0.0 for impl in impls}
        gc.collect()
        for i in range(steps):
            for impl in order:
                t0, c0 = time.perf_counter(), time.process_time()
                impl.run(i)
                wall[impl.name] += time.perf_counter() - t0
                cpu[impl.name] += time.process_time() - c0
        for impl in impls:
            rates[impl.name].append(steps * batch / wall[impl.name])
            cpu_rates[impl.name].append(steps * batch / cpu[impl.name])
        if peak is not None:
            rates.setdefault("_peak", []).append(peak())
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1] / (1e9 if k == '_peak' else 1):.1f}"
                                                       for k, v in rates.items()))
    return rates, cpu_rates


def run(args: argparse.Namespace) -> int:
    """``mmjepa bench speed`` with parsed arguments (see ``mmjepa_cli``)."""
    cfg = BenchConfig(**(TINY if args.tiny else {}))
    for f in ("image_size", "patch_size", "width", "depth", "heads", "pred_width", "pred_depth", "pred_heads",
              "batch_size", "num_targets"):
        if getattr(args, f) is not None:
            setattr(cfg, f, getattr(args, f))
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    precisions = [s for s in args.precision.split(",") if s]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

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
        "config": asdict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "repeats": args.repeats, "warmup": args.warmup, "steps_per_round": args.steps, "masks": args.masks,
        "mask_tokens": {"mmjepa": mask_stats(masks), "lightly": mask_stats(lmasks)},
        "collator_check": collator_check,
        "peak_flops": {}, "peak_flops_during": {}, "train": {}, "infer": {},
    }
    log(f"config {asdict(cfg)}; threads {torch.get_num_threads()}")
    for prec in precisions:
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        result["peak_flops"][prec] = matmul_peak(dtype, args.peak_size)
        log(f"matmul peak {prec}: {result['peak_flops'][prec] / 1e9:.1f} GFLOP/s")

    for prec in precisions:
        amp = amp_ctx(prec)
        impls: list[Impl] = []
        if "train" not in skip:
            mm, mopt = build_mmjepa(cfg)
            lm, lopt = build_lightly(cfg)
            impls.append(Impl("mmjepa", "train", prec,
                              lambda i, m=mm, o=mopt: mmjepa_train_step(m, o, images, masks[i % len(masks)], amp),
                              lambda m=mm, o=mopt: count_flops(lambda: mmjepa_train_step(m, o, images, masks[0], amp)),
                              lambda m=mm, o=mopt: peak_step_memory(lambda: mmjepa_train_step(m, o, images, masks[0], amp)),
                              lambda m=mm, o=mopt: state_bytes(m, o)))
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
                                  lambda i, m=cm, o=copt: mmjepa_train_step(m, o, images, masks[i % len(masks)], amp),
                                  lambda m=mm, o=mopt: count_flops(lambda: mmjepa_train_step(m, o, images, masks[0], amp)),
                                  lambda m=cm, o=copt: peak_step_memory(lambda: mmjepa_train_step(m, o, images, masks[0], amp)),
                                  lambda m=cm, o=copt: state_bytes(m, o), time.perf_counter() - t0))
        if "infer" not in skip:
            mm_inf, _ = build_mmjepa(cfg)
            mm_inf.eval()
            hf = build_hf_ijepa(cfg)
            impls.append(Impl("mmjepa_encoder", "infer", prec, lambda i, m=mm_inf: mmjepa_infer(m, images, amp),
                              lambda m=mm_inf: count_flops(lambda: mmjepa_infer(m, images, amp)),
                              lambda m=mm_inf: peak_step_memory(lambda: mmjepa_infer(m, images, amp)),
                              lambda m=mm_inf: state_bytes(m.target_encoders, None)))
            impls.append(Impl("hf_IJepaModel", "infer", prec, lambda i, m=hf: hf_infer(m, images, amp),
                              lambda m=hf: count_flops(lambda: hf_infer(m, images, amp)),
                              lambda m=hf: peak_step_memory(lambda: hf_infer(m, images, amp)),
                              lambda m=hf: state_bytes(m, None)))
            if args.compile:
                cinf, _ = build_mmjepa(cfg, compile=True)
                cinf.eval()
                t0 = time.perf_counter()
                mmjepa_infer(cinf, images, amp)
                impls.append(Impl("mmjepa_encoder_compiled", "infer", prec, lambda i, m=cinf: mmjepa_infer(m, images, amp),
                                  lambda m=mm_inf: count_flops(lambda: mmjepa_infer(m, images, amp)),
                                  lambda m=cinf: peak_step_memory(lambda: mmjepa_infer(m, images, amp)),
                                  lambda m=cinf: state_bytes(m.target_encoders, None), time.perf_counter() - t0))
        log(f"[{prec}] timing {', '.join(i.name for i in impls)}")
        for kind in ("train", "infer"):
            group = [i for i in impls if i.kind == kind]
            if not group:
                continue
            dtype = torch.bfloat16 if prec == "bf16" else torch.float32
            rates, cpu_rates = time_interleaved(group, args.steps, args.repeats, args.warmup, cfg.batch_size, log,
                                                peak=lambda: matmul_peak(dtype, args.peak_size, repeats=3))
            round_peak = statistics.median(rates.pop("_peak"))
            result["peak_flops_during"].setdefault(prec, {})[kind] = round_peak
            for impl in group:
                entry: dict[str, Any] = {"samples_per_s": statistics.median(rates[impl.name]),
                                         "samples_per_s_all": rates[impl.name],
                                         "samples_per_cpu_s": statistics.median(cpu_rates[impl.name]),
                                         "samples_per_cpu_s_all": cpu_rates[impl.name]}
                if impl.compile_s:
                    entry["compile_s"] = impl.compile_s
                if "flops" not in skip:
                    entry["flops_per_step"] = impl.flops()
                    steps_per_s = entry["samples_per_s"] / cfg.batch_size
                    entry["achieved_flops"] = entry["flops_per_step"] * steps_per_s
                    entry["mfu"] = entry["achieved_flops"] / round_peak
                if "memory" not in skip:
                    entry["state_bytes"] = impl.static_bytes()
                    entry["step_peak_bytes"] = impl.memory()
                    entry["peak_bytes"] = entry["state_bytes"] + entry["step_peak_bytes"]
                result[kind].setdefault(prec, {})[impl.name] = entry
        del impls
        gc.collect()

    def paired(a: dict, b: dict, key: str) -> float:
        return statistics.median(x / y for x, y in zip(a[key + "_all"], b[key + "_all"]))

    for kind, base in (("train", "lightly"), ("infer", "hf_IJepaModel")):
        for prec, impls in result[kind].items():
            for name, e in impls.items():
                if name != base:
                    e["speedup_paired_rounds"] = paired(e, impls[base], "samples_per_s")
                    e["speedup_cpu_time"] = e["samples_per_cpu_s"] / impls[base]["samples_per_cpu_s"]
    for prec in precisions:
        tr, inf = result["train"].get(prec, {}), result["infer"].get(prec, {})
        if "mmjepa" in tr:
            result[f"train_speedup_{prec}"] = tr["mmjepa"]["samples_per_s"] / tr["lightly"]["samples_per_s"]
            if "mmjepa_compiled" in tr:
                result[f"train_speedup_compiled_{prec}"] = (tr["mmjepa_compiled"]["samples_per_s"]
                                                            / tr["lightly"]["samples_per_s"])
        if "mmjepa_encoder" in inf:
            result[f"infer_speedup_{prec}"] = (inf["mmjepa_encoder"]["samples_per_s"]
                                               / inf["hf_IJepaModel"]["samples_per_s"])
            if "mmjepa_encoder_compiled" in inf:
                result[f"infer_speedup_compiled_{prec}"] = (inf["mmjepa_encoder_compiled"]["samples_per_s"]
                                                            / inf["hf_IJepaModel"]["samples_per_s"])
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        log(f"wrote {args.json}")
    return 0


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'part':6} {'prec':5} {'implementation':24} {'samples/s':>10} {'per CPU-s':>10} {'GFLOP/step':>11} "
             f"{'MFU':>6} {'peak MiB':>9} {'compile s':>9} {'x peer':>7} {'x paired':>8} {'x CPU-s':>7}"]
    for kind in ("train", "infer"):
        for prec, impls in result[kind].items():
            for name, e in impls.items():
                gf = f"{e['flops_per_step'] / 1e9:.2f}" if "flops_per_step" in e else "-"
                mfu = f"{100 * e['mfu']:.0f}%" if "mfu" in e else "-"
                mem = f"{e['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in e else "-"
                comp = f"{e['compile_s']:.0f}" if "compile_s" in e else "-"
                base = impls["lightly" if kind == "train" else "hf_IJepaModel"]
                ratio = f"{e['samples_per_s'] / base['samples_per_s']:.2f}"
                pr = f"{e['speedup_paired_rounds']:.2f}" if "speedup_paired_rounds" in e else "-"
                cr = f"{e['speedup_cpu_time']:.2f}" if "speedup_cpu_time" in e else "-"
                lines.append(f"{kind:6} {prec:5} {name:24} {e['samples_per_s']:10.1f} {e['samples_per_cpu_s']:10.1f} "
                             f"{gf:>11} {mfu:>6} {mem:>9} {comp:>9} {ratio:>7} {pr:>8} {cr:>7}")
    for k, v in result.items():
        if "speedup" in k:
            lines.append(f"{k}: {v:.2f}x")
    for prec, v in result["peak_flops"].items():
        during = ", ".join(f"{k} {x / 1e9:.0f}" for k, x in result["peak_flops_during"].get(prec, {}).items())
        lines.append(f"matmul peak {prec}: {v / 1e9:.0f} GFLOP/s at start; median of the rounds: {during} "
                     "(MFU is taken against the latter)")
    return "\n".join(lines)

