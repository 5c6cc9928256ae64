"""``mmjepa bench scaling``: the window arithmetic (fast) and one tiny round of the real harness (slow:
three ``mmjepa train`` runs, one of them through ``accelerate launch``, mostly start-up time).
No timing assertions: the figures depend on the machine; this checks the plumbing."""

from __future__ import annotations

import json

import pytest
import torch

from mmjepa.bench.scaling import throughput
from mmjepa_cli import main as cli_main


def test_throughput_counts_only_the_windows_after_the_warmup():
    # 64 samples per step, logged every 2 steps; the warm-up window (steps 1-2) is very slow
    logs = [{"step": 2, "samples_seen": 128, "samples_per_s": 10.0, "wall_time": 100.0},
            {"step": 4, "samples_seen": 256, "samples_per_s": 128.0, "wall_time": 101.0},
            {"step": 6, "samples_seen": 384, "samples_per_s": 64.0, "wall_time": 103.0}]
    r = throughput(logs, warmup=2)
    assert r["timed_steps"] == 4 and r["timed_samples"] == 256
    assert r["timed_seconds"] == pytest.approx(3.0)
    assert r["samples_per_s"] == pytest.approx(256 / 3) and r["wall_samples_per_s"] == pytest.approx(256 / 3)
    assert throughput(logs, warmup=4)["samples_per_s"] == pytest.approx(64.0)
    with pytest.raises(RuntimeError, match="no logged window"):
        throughput(logs, warmup=6)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_tiny_scaling_bench_writes_json(tmp_path):
    out = tmp_path / "scaling.json"
    rc = cli_main(["bench", "scaling", "--rounds", "1", "--warmup", "2", "--steps", "2", "--log-every", "2",
                   "--json", str(out), "--workdir", str(tmp_path / "runs"), "data.batch_size=16"])
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("samples_per_s_1proc", "samples_per_s_2proc", "samples_per_s_1proc_2threads", "scaling_efficiency"):
        assert r[key] > 0, key
    assert r["scaling_efficiency"] == pytest.approx(r["samples_per_s_2proc"] / (2 * r["samples_per_s_1proc"]))
    assert r["command"].startswith("mmjepa bench scaling") and "--rounds 1" in r["command"]
    assert r["machine"]["cores_available"] >= 1 and r["machine"]["torch"] == torch.__version__
    assert [run["config"] for run in r["runs"]] == ["1proc", "2proc", "1proc_2threads"]
    for run in r["runs"]:  # one timed window of 2 steps; the 2-process run takes twice the samples per step
        assert run["timed_steps"] == 2 and run["timed_samples"] == 2 * 16 * run["processes"]
        assert run["samples_per_s"] > 0 and run["run_seconds"] > run["timed_seconds"]
    assert "accelerate.commands.launch" in r["runs"][1]["command"] and "data.num_workers=0" in r["runs"][0]["command"]
    assert r["settings"]["overrides"] == ["data.batch_size=16"]
