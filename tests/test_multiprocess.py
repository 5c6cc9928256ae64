"""Two processes on CPU (gloo) through `accelerate launch --multi_gpu` with ACCELERATE_USE_CPU=true:

(a) one epoch of a sharded set: every sample key exactly once across the ranks, uneven shards do
    not hang, and passing the loader through ``accelerator.prepare`` (the trap) does not deliver
    the keys exactly once;
(b) 2 processes x batch b reach the weights of 1 process x batch 2b (within 1e-5);
(c) a run whose rank dies mid-way ends with a clear error instead of hanging (d), and resuming it
    reaches the weights of the uninterrupted run;
(e) FSDP2 (torch's fully_shard, through torchrun) matches one process, with the EMA update on each
    rank's own shards of the targets and no collective during it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mmjepa.engine import list_checkpoints, load_recipe, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    import torch
    mode, recipe, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    from mmjepa.engine import load_recipe, train

    if mode == "data":
        from accelerate import Accelerator
        from mmjepa.data import DataPipeline, DataStream
        acc = Accelerator(cpu=True)
        r = load_recipe(recipe)
        pipe = DataPipeline(r.data, r.model_config(), acc.process_index, acc.num_processes)
        keys, stream = [], DataStream(pipe)
        for _ in range(pipe.batches_per_epoch):
            keys += next(stream)["__key__"]
        stream.close()
        # the trap: a per-rank split stream (ids 0..31, like the shards above) through prepare()
        from mmjepa.data import split_by_node

        class Ids(torch.utils.data.IterableDataset):
            def __iter__(self):
                ids = list(split_by_node(acc.process_index, acc.num_processes)(range(32)))
                for i in range(0, len(ids), 4):
                    yield torch.tensor(ids[i:i + 4])

        prepared = acc.prepare(torch.utils.data.DataLoader(Ids(), batch_size=None))
        trap = [int(x) for b in prepared for x in b]
        try:  # and our batches (dicts of tensors, key lists, nested masks) through prepare()
            real = len([k for b in acc.prepare(pipe.loader(epoch=0)) for k in b["__key__"]])
        except Exception as err:
            real = "error: " + type(err).__name__
        json.dump({"keys": keys, "trap": trap, "real": real, "batches": pipe.batches_per_epoch},
                  open(f"{out}/keys_{acc.process_index}.json", "w"))
    else:
        die_rank, die_step = (int(x) for x in sys.argv[4:6]) if len(sys.argv) > 5 else (-1, -1)
        rank = int(os.environ.get("RANK", 0))

        def die(step, logs):
            if rank == die_rank and step == die_step:
                os.kill(os.getpid(), signal.SIGKILL)

        res = train(load_recipe(recipe, [f"train.output_dir={out}"]), callbacks=[die])
        torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()}, f"{out}/params_{rank}.pt")
''')

IMAGE = {"image_size": 32, "patch_size": 4, "num_channels": 1, "image_mean": [0.5], "image_std": [0.5], "min_keep": 2}
FIXED_MASKS = {"num_targets": 1, "target_scale": [1.0, 1.0], "context_scale": [1.0, 1.0], "allow_overlap": True}


def tiny_recipe(**data) -> dict:
    return {
        "model": {"preset": None, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "predictor_hidden_size": 16, "predictor_num_hidden_layers": 1, "predictor_num_attention_heads": 2,
                  "modalities": {"image": {**IMAGE, **FIXED_MASKS}}},
        "data": {"sources": [{"type": "builtin", "name": "digits"}], "batch_size": 4, "num_workers": 0, **data},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"max_steps": 8, "save_every": 3, "log_every": 2, "tracker": "none", "progress": False,
                  "ddp_timeout": 60},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, mode: str, recipe: dict, out: Path, *extra: str, timeout: float = 240):
    """Run the helper script in 2 processes; returns (returncode, output, seconds)."""
    script = tmp_path / "mp_script.py"
    script.write_text(SCRIPT)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           str(script), mode, json.dumps(recipe), str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the 2-process run hung for {timeout} s:\n{output[-3000:]}")
    return proc.returncode, output, time.perf_counter() - t0


def test_epoch_split_exactly_once_and_the_prepare_trap(tmp_path):
    from test_data import make_digit_shards

    even = make_digit_shards(tmp_path, [8, 8, 8, 8], prefix="e")
    recipe = tiny_recipe(sources=[{"type": "shards", "urls": str(even)}], num_workers=2)
    rc, output, _ = launch(tmp_path, "data", recipe, tmp_path / "out")
    assert rc == 0, output[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"keys_{r}.json").read_text()) for r in range(2)]
    keys = ranks[0]["keys"] + ranks[1]["keys"]
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == 16
    assert sorted(keys) == [f"e{i:04d}" for i in range(32)]  # every key exactly once
    trap = ranks[0]["trap"] + ranks[1]["trap"]
    assert sorted(trap) != list(range(32))  # prepare() re-splits an already split stream: samples lost
    print("prepare() trap:", len(trap), "ids,", len(set(trap)), "distinct; our batches:",
          [r["real"] for r in ranks])

@pytest.mark.slow
def test_uneven_shards_do_not_hang(tmp_path):
    """A whole-epoch run over 5 shards on 2 ranks (3 vs 2 shards) ends on both ranks."""
    from test_data import make_digit_shards

    uneven = make_digit_shards(tmp_path, [8, 8, 8, 8, 8], prefix="u")
    recipe = tiny_recipe(sources=[{"type": "shards", "urls": str(uneven)}], num_workers=2)
    recipe["train"].update(max_steps=None, epochs=1, save_every=0)
    rc, output, _ = launch(tmp_path, "train", recipe, tmp_path / "uneven")
    assert rc == 0, output[-3000:]
    states = [json.loads(p.read_text()) for p in sorted((tmp_path / "uneven" / "checkpoints").glob("*/trainer_state_*.json"))]
    assert [s["step"] for s in states] == [5, 5] and all(s["data"]["epoch"] == 0 and s["data"]["batch"] == 5
                                                         for s in states)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted 2-process run (batch 4 per process, 8 steps, checkpoints every 3)."""
    tmp = tmp_path_factory.mktemp("ref")
    rc, output, secs = launch(tmp, "train", tiny_recipe(), tmp / "out")
    assert rc == 0, output[-3000:]
    return tmp / "out"


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def test_two_processes_equal_one_process_with_twice_the_batch(reference_run, tmp_path):
    p0, p1 = (torch.load(reference_run / f"params_{r}.pt") for r in range(2))
    assert _max_diff(p0, p1) == 0.0  # the ranks stay identical
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(load_recipe(tiny_recipe(batch_size=8), [f"train.output_dir={tmp_path / 'single'}"]))
    finally:
        torch.set_num_threads(n)
    assert single.samples_seen == 64
    assert _max_diff(single.model.state_dict(), p0) < 1e-5


@pytest.mark.slow
def test_dying_rank_fails_cleanly_and_resume_matches(reference_run, tmp_path):
    out = tmp_path / "cut"
    t0 = time.perf_counter()
    rc, output, secs = launch(tmp_path, "train", tiny_recipe(), out, "1", "5", timeout=180)
    assert rc != 0
    assert "mmjepa: rank 0: training stopped" in output or "ChildFailedError" in output, output[-3000:]
    assert secs < 120  # far below ddp_timeout + launcher start: the survivor did not wait it out
    assert [p.name for p in list_checkpoints(out)] == ["step_00000003"]
    rc, output, _ = launch(tmp_path, "train", tiny_recipe(), out)
    assert rc == 0, output[-3000:]
    assert "resumed from" in output
    ref = torch.load(reference_run / "params_0.pt")
    for r in range(2):
        assert _max_diff(torch.load(out / f"params_{r}.pt"), ref) == 0.0
    assert time.perf_counter() - t0 < 240


FSDP_SCRIPT = textwrap.dedent('''
    import json, sys, torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from mmjepa import MMJepaModel
    from mmjepa.data import DataPipeline, DataStream, model_inputs
    from mmjepa.layers import Block
    from mmjepa.engine.optim import build_optimizer
    from mmjepa.engine import load_recipe

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    recipe = load_recipe(json.loads(sys.argv[1]))
    torch.manual_seed(0)
    model = MMJepaModel(recipe.model_config())
    if world > 1:  # configs/accelerate/fsdp.yaml: one shard unit per transformer Block, then the root
        for m in model.modules():
            if isinstance(m, Block):
                fully_shard(m)
        fully_shard(model)
    opt = build_optimizer(model, lr=1e-3, fused=False)
    stream = DataStream(DataPipeline(recipe.data, recipe.model_config(), rank, world))
    checks = []
    for step in range(3):
        model(**model_inputs(next(stream))).loss.backward()
        opt.step()
        opt.zero_grad()
        if world == 1:
            model.update_target(model.momentum(step, 3))
            continue
        # EMA on the local shards: the targets are sharded DTensors and the update runs shard by
        # shard, with no collective (CommDebugMode sees torch.distributed's and DTensor's collectives)
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor.debug import CommDebugMode
        targets = list(model.target_encoders.parameters())
        before = [p.to_local().clone() for p in targets]
        with CommDebugMode() as ema_comms:
            model.update_target(model.momentum(step, 3))
        with CommDebugMode() as gather_comms:  # the counter's control: a gather of full weights is seen
            targets[0].full_tensor()
        checks.append({"dtensor": all(isinstance(p, DTensor) for p in targets),
                       "placements": sorted({repr(pl) for p in targets for pl in p.placements}),
                       "local": sum(p.to_local().numel() for p in targets), "full": sum(p.numel() for p in targets),
                       "params": len(targets),
                       "moved": sum(int(not torch.equal(b, p.to_local())) for b, p in zip(before, targets)),
                       "ema_collectives": ema_comms.get_total_counts(),
                       "gather_collectives": gather_comms.get_total_counts()})
    if world > 1:
        json.dump(checks, open(f"{sys.argv[2]}.ema_{rank}.json", "w"))
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(state, sys.argv[2])
    dist.destroy_process_group()
''')


@pytest.mark.slow
def test_fsdp2_on_cpu_matches_one_process(tmp_path):
    """accelerate turns FSDP into MULTI_CPU on CPU, so torch's fully_shard (FSDP2) is driven directly:
    the Block-wise sharding of configs/accelerate/fsdp.yaml, EMA update on sharded targets included,
    2 processes x batch 4 == 1 process x batch 8. Under FSDP2 the EMA targets are DTensors sharded on
    dim 0 and each rank lerps only its own local shards: CommDebugMode counts no collective during the
    update (and does count the all-gather of a full_tensor(), the control)."""
    script = tmp_path / "fsdp_script.py"
    script.write_text(FSDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {}
    for world, batch in ((2, 4), (1, 8)):
        recipe = tiny_recipe(batch_size=batch)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), json.dumps(recipe),
               str(tmp_path / f"p{world}.pt")]
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        out[world] = torch.load(tmp_path / f"p{world}.pt")
    assert _max_diff(out[1], out[2]) < 1e-5
    moved = _max_diff({k: v for k, v in out[2].items() if k.startswith("encoders")},
                      {k.replace("target_encoders", "encoders", 1): v for k, v in out[2].items()
                       if k.startswith("target_encoders")})
    assert moved > 0  # targets and context encoders differ: the EMA ran (not a copy)
    # each rank updated only its own shard of the targets, in place, without a collective
    ranks = [json.loads((tmp_path / f"p2.pt.ema_{rank}.json").read_text()) for rank in range(2)]
    for c0, c1 in zip(*ranks, strict=True):
        assert c0["local"] + c1["local"] == c0["full"] and 0 < c0["local"] < c0["full"]  # the shards split them
        for c in (c0, c1):
            assert c["dtensor"] and c["placements"] == ["Shard(dim=0)"], c
            assert c["moved"] == c["params"], c  # every local shard changed
            assert c["ema_collectives"] == 0, c  # no all-gather (or any collective) in the EMA update
            assert c["gather_collectives"] > 0, c  # while the same counter does see a full-weight gather
    assert len(ranks[0]) == 3
