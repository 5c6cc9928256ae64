"""The speed benchmark's harness on a tiny configuration: it runs, and its JSON holds sane figures.
(No timing assertions: this only checks the plumbing.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lightly")
pytest.importorskip("torchvision")

from mmjepa.bench import speed  # noqa: E402
from mmjepa_cli import main as cli_main  # noqa: E402


def test_tiny_bench_writes_json(tmp_path):
    out = tmp_path / "speed.json"
    rc = cli_main(["bench", "speed", "--tiny", "--json", str(out), "--repeats", "1", "--warmup", "1", "--steps", "1",
                     "--peak-size", "128", "--check-batches", "2", "--skip", "memory", "--precision", "fp32",
                     "--threads", "1"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["threads"] == [1] and list(r["runs"]) == ["1"] and r["headline_threads"] in (1, r["default_threads"])
    assert r["machine"]["cpu"] and r["machine"]["torch"] and isinstance(r["bf16_native"], bool)
    for prec in ("fp32",):
        for key in (f"train_speedup_{prec}", f"infer_speedup_{prec}", f"train_speedup_{prec}_1thread",
                    f"infer_speedup_{prec}_1thread"):
            assert r[key] > 0
        assert 0 < r[f"train_mfu_{prec}_1thread"] < 1
        run = r["runs"]["1"]
        assert run["peak_flops"][prec] > 0
        # both attention kernels are timed: "auto" is SDPA in fp32 on CPU, matmul the other row
        for kind, names in (("train", ("mmjepa", "mmjepa (matmul attention)", "lightly")),
                            ("infer", ("mmjepa_encoder", "mmjepa_encoder (matmul attention)", "hf_IJepaModel"))):
            assert set(run[kind][prec]) == set(names)
            for name in names:
                e = run[kind][prec][name]
                assert e["samples_per_s"] > 0 and e["flops_per_step"] > 0 and 0 < e["mfu"]
                assert e["samples_per_s_min"] <= e["samples_per_s"] <= e["samples_per_s_max"]
                assert e["rounds_used"] == 1 and e["rounds_disturbed"] in (0, 1)
            assert run[kind][prec][names[0]]["attention"] == "sdpa"
            assert run[kind][prec][names[1]]["attention"] == "matmul"
            rnd = run["rounds"][prec][kind]["rounds"][0]
            assert rnd["wall_s"] > 0 and rnd["cpu_s"] > 0 and isinstance(rnd["disturbed"], bool)
    # bf16 was not asked for: its headline keys exist and are null
    assert r["train_speedup_bf16"] is None and r["train_mfu_bf16_1thread"] is None
    # identical configuration -> both training steps count (nearly) the same FLOPs; lightly's class
    # token adds one token per image to its target encoder
    train = r["runs"]["1"]["train"]["fp32"]
    f_mm, f_li = train["mmjepa"]["flops_per_step"], train["lightly"]["flops_per_step"]
    assert 0.9 < f_li / f_mm < 1.15
    assert train["mmjepa (matmul attention)"]["flops_per_step"] == f_mm
    infer = r["runs"]["1"]["infer"]["fp32"]
    assert infer["mmjepa_encoder"]["flops_per_step"] == infer["hf_IJepaModel"]["flops_per_step"]


def test_disturbed_rounds_are_left_out_of_the_median():
    rounds = [{"disturbed": d} for d in (False, True, False, False, True)]
    assert speed.used_rounds(rounds) == [0, 2, 3]
    assert speed.summarize([10.0, 1.0, 12.0, 11.0, 2.0], [0, 2, 3]) == {"median": 11.0, "min": 10.0, "max": 12.0}
    assert speed.used_rounds([{"disturbed": d} for d in (True, False, True)]) == [0, 1, 2]  # < 3 quiet: all
    wait = speed.runqueue_wait_s()
    assert wait is None or wait >= 0


def test_peak_memory_of_a_step_is_positive():
    import torch

    x = torch.randn(64, 64, requires_grad=True)
    assert speed.peak_step_memory(lambda: (x @ x).relu().sum().backward()) >= 64 * 64 * 4
