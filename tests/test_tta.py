"""The time-to-accuracy benchmark's harness (``mmjepa bench tta --quick``) on the digit images:
it trains the reference and one option through the real trainer, stops them at the target, keeps
the probe time off the training clock and writes a sane JSON and plot. (No claims about which
option is faster: a few steps say nothing about that.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn.datasets")

from mmjepa.bench import tta  # noqa: E402
from mmjepa_cli import main as cli_main  # noqa: E402


def test_quick_tta_on_digits(tmp_path, one_thread):
    out = tmp_path / "tta.json"
    # target 0: every run stops at its first probe, so the stop, the speed-up and the second run of
    # the best option to the recipe's end (for digits_probe_acc) are all exercised
    rc = cli_main(["bench", "tta", "--quick", "--datasets", "digits", "--options", "reference,corners",
                   "--digits-target", "0.0", "--workdir", str(tmp_path / "runs"), "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["benchmark"] == "tta" and r["quick"] is True and r["fsdd_tta_speedup"] is None
    assert r["command"].startswith("mmjepa bench tta") and r["machine"]["cpus"] >= 1
    assert (tmp_path / "tta.png").stat().st_size > 0 and r["plot"] == str(tmp_path / "tta.png")
    d = r["datasets"]["digits"]
    assert d["target"] == 0.0 and d["skipped"] == {} and set(d["options"]) == {"reference", "corners"}
    assert d["options"]["corners"]["overrides"][-2:-1] == ["model.modalities.image.mask_corners=full"]
    for name, run in d["options"].items():
        curve = run["curve"]
        steps, secs = [c[0] for c in curve], [c[1] for c in curve]
        assert steps == sorted(steps) and secs == sorted(secs), "steps and training seconds grow along the curve"
        assert all(0.0 <= c[2] <= 1.0 for c in curve)
        assert run["stopped_by"] == "target" and run["steps_to_target"] == 2 == run["steps"] < run["max_steps"] == 4
        assert run["seconds_to_target"] == secs[-1] > 0 and run["train_seconds"] > 0 and run["probe_seconds"] > 0
        assert run["samples_per_s"] > 0
    assert d["options"]["reference"]["curve"][0][:2] == [0, 0.0]  # the initial weights, before the clock
    assert d["random_init_probe_acc"] == d["options"]["reference"]["curve"][0][2]
    ref, best = d["options"]["reference"]["seconds_to_target"], d["best_option"]
    assert best == "corners" and r["digits_tta_speedup"] == pytest.approx(ref / d["options"]["corners"]["seconds_to_target"], rel=1e-3)
    # the best option, trained again to the recipe's last step, gives digits_probe_acc
    full = d["best_option_full_length"]
    assert full["steps"] == full["max_steps"] == 4 and full["stopped_by"] == "max_steps"
    assert r["digits_probe_acc"] == full["final_acc"] and r["digits_probe_acc_option"] == "corners"
    assert 0.5 < r["digits_raw_pixel_probe_acc"] <= 1.0


def test_options_that_do_not_apply_are_skipped_with_a_reason():
    ds = tta.DATASETS["fsdd"]
    plan, skipped = tta.plan_options(["reference", "corners", "crop"], ds, [])
    assert plan == {"reference": []}  # FSDD's recipe masks tf_blocks: no corners; audio has no crops
    assert "tf_blocks" in skipped["corners"] and "image" in skipped["crop"]
    plan, skipped = tta.plan_options(["reference", "combined"], ds, [])
    combined = plan.get("combined", [])  # the options of the model config that this version has, if two
    assert not any("mask_corners" in o or "crop_scale" in o for o in combined)
    plan, skipped = tta.plan_options(["reference", "corners", "crop", "combined"], tta.DATASETS["digits"], [])
    assert plan["combined"][:2] == plan["corners"] + plan["crop"] and not skipped
    with pytest.raises(ValueError, match="unknown option"):
        tta.option_overrides("warp", ds, None)
