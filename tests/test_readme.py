"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["emb"].shape == (8, 192)
    assert torch.isfinite(scope["out"].loss)
    assert (tmp_path / "ckpt" / "config.json").is_file()
