"""Scaling benchmark: ``mmjepa train`` in 1 process against 2 gloo processes on the same CPU cores.

Three configurations of the same recipe (by default the CPU digits recipe), each a separate
``mmjepa train`` run in its own process tree:

- ``1proc``: one process, one torch thread;
- ``2proc``: two processes started by ``accelerate launch --multi_gpu --num_processes 2`` with
  ``ACCELERATE_USE_CPU=true`` (what ``configs/accelerate/multi_cpu.yaml`` sets up; the flags are given
  on the command line so that each run gets a free rendezvous port), one torch thread each, gradients
  averaged over gloo;
- ``1proc_2threads``: one process with two torch threads, the other way to use two cores.

Design decisions:

- ``data.batch_size`` is per process (as in training), so 2 processes take twice the samples per
  step; every figure is global samples per second.
- ``data.num_workers=0``: batches are made in the training process, so no DataLoader worker competes
  with the measured processes for the cores. ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set the threads
  of each process; ``CUDA_VISIBLE_DEVICES`` is emptied so that a GPU machine measures its CPUs too.
- The throughput is the trainer's own: each logged window's ``samples_seen`` increase over its
  ``samples_per_s`` gives the window's duration, and the measured span is the windows after the
  warm-up (``--warmup`` steps, a multiple of ``--log-every``), read back from the run's TensorBoard
  events. Start-up (imports, process-group rendezvous, data loading), the warm-up steps and the final
  checkpoint/export are therefore excluded. The wall-clock span between the TensorBoard event
  timestamps of the same log steps is kept as a cross-check (``wall_samples_per_s``).
- The configurations are interleaved round by round (1proc, 2proc, 1proc_2threads, 1proc, ...), so
  slow drift of the machine (other jobs, thermal state) hits all of them alike; the medians over
  rounds are reported with their min and max. Scaling efficiency = samples/s(2 processes) /
  (2 x samples/s(1 process)), from the medians; the per-round ratios are kept too.
- The load average before and after is recorded: on a shared machine other work skews the result.

Run::

    mmjepa bench scaling --json scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import accelerate
import torch

from .speed import cpu_model

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "image" / "digits_ijepa_cpu.yaml"
CONFIGS = {"1proc": (1, 1), "2proc": (2, 1), "1proc_2threads": (1, 2)}  # name -> (processes, threads each)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(recipe: str, processes: int, overrides: list[str]) -> list[str]:
    """The ``mmjepa train`` command line, through ``accelerate launch`` for several processes."""
    train = ["-m", "mmjepa", "train", recipe, *overrides]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), *train]


def read_logs(output_dir: Path) -> list[dict[str, float]]:
    """The logged steps of a run from its TensorBoard events: step, samples_seen, samples_per_s, wall time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(output_dir.rglob("events.out.tfevents*"))
    if not events:
        raise RuntimeError(f"no TensorBoard events under {output_dir}: the run logged nothing")
    rows: dict[int, dict[str, float]] = {}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        for tag in ("samples_seen", "samples_per_s"):
            if tag not in tags:
                continue
            for e in acc.Scalars(tag):
                row = rows.setdefault(int(e.step), {"step": int(e.step)})
                row[tag] = float(e.value)
                row["wall_time"] = max(row.get("wall_time", 0.0), float(e.wall_time))
    return [rows[s] for s in sorted(rows)]


def throughput(logs: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """Samples/s over the logged windows that start at or after step ``warmup``."""
    start = next((i for i, r in enumerate(logs) if r["step"] == warmup), None)
    if start is None or start == len(logs) - 1:
        raise RuntimeError(f"no logged window after the warm-up step {warmup} (logged steps: "
                           f"{[r['step'] for r in logs]})")
    windows = list(zip(logs[start:], logs[start + 1:]))
    samples = sum(b["samples_seen"] - a["samples_seen"] for a, b in windows)
    seconds = sum((b["samples_seen"] - a["samples_seen"]) / b["samples_per_s"] for a, b in windows)
    wall = logs[-1]["wall_time"] - logs[start]["wall_time"]
    return {"samples_per_s": samples / seconds, "wall_samples_per_s": samples / wall if wall > 0 else float("nan"),
            "timed_steps": int(logs[-1]["step"] - logs[start]["step"]), "timed_samples": int(samples),
            "timed_seconds": seconds}


def run_once(name: str, recipe: str, workdir: Path, warmup: int, steps: int, log_every: int,
             overrides: list[str], timeout: float) -> dict[str, Any]:
    """One ``mmjepa train`` run of configuration ``name``; returns its throughput and timings."""
    processes, threads = CONFIGS[name]
    out = Path(tempfile.mkdtemp(prefix=f"{name}_", dir=workdir))
    fixed = ["data.num_workers=0", f"train.max_steps={warmup + steps}", f"train.log_every={log_every}",
             "train.save_every=0", "train.export_every=0", "train.tracker=tensorboard", "train.progress=false",
             "train.resume=never", f"train.output_dir={out}"]
    cmd = train_command(recipe, processes, [*overrides, *fixed])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise RuntimeError(f"{name}: the run took over {timeout:.0f} s:\n{output[-2000:]}") from None
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: mmjepa train failed ({proc.returncode}):\n{output[-3000:]}")
    result = throughput(read_logs(out), warmup)
    return {"config": name, "processes": processes, "threads_per_process": threads, **result,
            "run_seconds": seconds, "command": shlex.join(cmd)}


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def machine_info() -> dict[str, Any]:
    cpu = cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores_available": cores, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "accelerate": accelerate.__version__}


def _loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def measure(recipe: str | Path = DEFAULT_RECIPE, rounds: int = 3, warmup: int = 20, steps: int = 120,
            log_every: int = 20, overrides: list[str] | None = None, workdir: str | Path | None = None,
            timeout: float = 600.0) -> dict[str, Any]:
    """Interleaved rounds of the three configurations; medians, spreads and the scaling efficiency."""
    if rounds < 1 or warmup < log_every or warmup % log_every or steps < log_every or steps % log_every:
        raise ValueError("--warmup and --steps must be positive multiples of --log-every (and --rounds >= 1)")
    recipe, overrides = str(recipe), list(overrides or [])
    load_before, t0 = _loadavg(), time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mmjepa_scaling_") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for r in range(rounds):
            for name in CONFIGS:
                run = run_once(name, recipe, work, warmup, steps, log_every, overrides, timeout)
                run["round"] = r
                runs.append(run)
                print(f"round {r + 1}/{rounds} {name:15s} {run['samples_per_s']:8.1f} samples/s "
                      f"(wall {run['wall_samples_per_s']:.1f}; run {run['run_seconds']:.0f} s)", flush=True)
    per = {name: [x["samples_per_s"] for x in runs if x["config"] == name] for name in CONFIGS}
    wall = {name: [x["wall_samples_per_s"] for x in runs if x["config"] == name] for name in CONFIGS}
    s1, s2, s1t2 = (statistics.median(per[n]) for n in CONFIGS)
    return {
        "samples_per_s_1proc": s1,
        "samples_per_s_2proc": s2,
        "scaling_efficiency": s2 / (2 * s1),
        "samples_per_s_1proc_2threads": s1t2,
        "two_processes_over_two_threads": s2 / s1t2,
        "spread": {name: _spread(v) for name, v in per.items()},
        "scaling_efficiency_per_round": [b / (2 * a) for a, b in zip(per["1proc"], per["2proc"])],
        "wall_clock_check": {name: _spread(v) for name, v in wall.items()},
        "measured": ("the trainer's logged samples_per_s windows after the warm-up (start-up, warm-up steps and "
                     "the final checkpoint excluded); global samples/s over all processes"),
        "settings": {"recipe": recipe, "overrides": overrides, "rounds": rounds, "warmup_steps": warmup,
                     "timed_steps": steps, "log_every": log_every, "data.num_workers": 0,
                     "configs": {n: {"processes": p, "threads_per_process": t} for n, (p, t) in CONFIGS.items()}},
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": _loadavg()},
        "runs": runs,
        "total_seconds": time.perf_counter() - t0,
    }


def run(args: argparse.Namespace) -> int:
    result = measure(args.recipe or DEFAULT_RECIPE, args.rounds, args.warmup, args.steps, args.log_every,
                     args.overrides, args.workdir, args.timeout)
    result["command"] = "mmjepa " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])
    sp = result["spread"]
    print(f"1 process:           {result['samples_per_s_1proc']:.1f} samples/s "
          f"(min {sp['1proc']['min']:.1f}, max {sp['1proc']['max']:.1f})")
    print(f"2 processes (gloo):  {result['samples_per_s_2proc']:.1f} samples/s "
          f"(min {sp['2proc']['min']:.1f}, max {sp['2proc']['max']:.1f})")
    print(f"1 process, 2 threads: {result['samples_per_s_1proc_2threads']:.1f} samples/s "
          f"(min {sp['1proc_2threads']['min']:.1f}, max {sp['1proc_2threads']['max']:.1f})")
    print(f"scaling efficiency 2 processes: {result['scaling_efficiency']:.2f} "
          f"({len(result['runs'])} runs in {result['total_seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
