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
                     "--peak-size", "128", "--check-batches", "2", "--skip", "memory", "--precision", "fp32"])
    assert rc == 0
    r = json.loads(out.read_text())
    for prec in ("fp32",):
        for key in (f"train_speedup_{prec}", f"infer_speedup_{prec}"):
            assert r[key] > 0
        assert r["peak_flops"][prec] > 0
        for kind, names in (("train", ("mmjepa", "lightly")), ("infer", ("mmjepa_encoder", "hf_IJepaModel"))):
            for name in names:
                e = r[kind][prec][name]
                assert e["samples_per_s"] > 0 and e["flops_per_step"] > 0 and 0 < e["mfu"]
    # identical configuration -> both training steps count (nearly) the same FLOPs; lightly's class
    # token adds one token per image to its target encoder
    f_mm, f_li = r["train"]["fp32"]["mmjepa"]["flops_per_step"], r["train"]["fp32"]["lightly"]["flops_per_step"]
    assert 0.9 < f_li / f_mm < 1.15
    assert r["infer"]["fp32"]["mmjepa_encoder"]["flops_per_step"] == r["infer"]["fp32"]["hf_IJepaModel"]["flops_per_step"]


def test_peak_memory_of_a_step_is_positive():
    import torch

    x = torch.randn(64, 64, requires_grad=True)
    assert speed.peak_step_memory(lambda: (x @ x).relu().sum().backward()) >= 64 * 64 * 4
