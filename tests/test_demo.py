"""The demo on a tiny budget writes every artifact, and what it saves loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mmjepa import MMJepaModel
from mmjepa.datasets import shared_data_dir
from mmjepa.demo import DIRECTIONS, run_trimodal_demo

TINY = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
        "model.predictor_hidden_size=16", "model.predictor_num_hidden_layers=1", "model.predictor_num_attention_heads=2",
        "data.batch_size=16", "data.num_workers=0", "train.log_every=1", "train.tracker=none", "optim.warmup_steps=1"]


@pytest.mark.skipif(shared_data_dir(required=False) is None, reason="needs the shared data folder (FSDD)")
def test_the_demo_on_a_tiny_budget_writes_every_artifact(tmp_path):
    out = tmp_path / "demo"
    metrics = run_trimodal_demo(out, steps=3, overrides=TINY, progress=False)
    assert (out / "demo_report.png").stat().st_size > 20_000
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["steps"] == 3
    for q, g in DIRECTIONS:
        assert 0.0 <= metrics[f"{q}_to_{g}_r1"] <= 1.0 and f"{q}_to_{g}_r1" in metrics["random_init"]
    assert {"image_zeroshot_acc", "audio_zeroshot_acc", "audio_to_image_r1_predicted"} <= set(metrics)
    model = MMJepaModel.from_pretrained(out / "model")
    assert model.modality_names and set(model.modality_names) == {"image", "audio", "text"}
    tokenizer = AutoTokenizer.from_pretrained(out / "model")  # saved beside the weights
    assert tokenizer("the number seven")["input_ids"]
    card = (out / "model" / "README.md").read_text()
    assert f"| text_to_image_r1 | {metrics['text_to_image_r1']:.4g} |" in card  # the card has the metrics


@pytest.mark.skipif(shared_data_dir(required=False) is None, reason="needs the shared data folder (FSDD)")
def test_the_readme_example_after_the_demo_runs(tmp_path, monkeypatch):
    """The README's second example, as written (but the upload), on what a tiny demo saved."""
    run_trimodal_demo(tmp_path / "demo_output", steps=1, overrides=TINY, progress=False)
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[1]
    code = "\n".join(line for line in code.splitlines() if "push_to_hub" not in line)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["emb"].shape == (1, 32) and len(scope["hits"][0]) == 5
