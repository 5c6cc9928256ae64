"""Mask sampler invariants: disjointness, sizes and aspect ratios, shapes, seeded determinism."""

from __future__ import annotations

import math

import pytest
import torch

from mmjepa.collate import MaskCollator
from mmjepa.masking import MultiBlock2D, RandomPatch
from mmjepa.modalities import get_modality


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("grid", [(12, 12), (14, 14), (8, 10)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiblock_shapes_and_disjoint(grid, seed):
    sampler = MultiBlock2D(grid=grid)
    B = 8
    masks = sampler(B, _gen(seed))
    ctx, tgt = masks["context"], masks["target"]
    N = grid[0] * grid[1]
    assert ctx.shape[0] == B and ctx.dtype == torch.long
    assert tgt.shape[:2] == (B, 4) and tgt.dtype == torch.long
    assert ctx.shape[1] > sampler.min_keep and tgt.shape[2] > sampler.min_keep
    for b in range(B):
        c = set(ctx[b].tolist())
        assert len(c) == ctx.shape[1], "context indices repeat"
        assert all(0 <= i < N for i in c)
        for m in range(4):
            t = set(tgt[b, m].tolist())
            assert len(t) == tgt.shape[2]
            assert not (c & t), "context and target overlap"


def test_allow_overlap_keeps_full_context_block():
    sampler = MultiBlock2D(grid=(12, 12), allow_overlap=True)
    masks = sampler(4, _gen(0))
    h, w = sampler.block_size(_gen(0), sampler.target_scale, sampler.target_aspect)  # first draw of the batch
    assert masks["target"].shape[2] <= h * w


@pytest.mark.parametrize("grid", [(14, 14), (12, 12)])
def test_block_sizes_and_aspect_within_range(grid):
    sampler = MultiBlock2D(grid=grid)
    H, W = grid
    g = _gen(3)
    for _ in range(300):
        h, w = sampler.block_size(g, sampler.target_scale, sampler.target_aspect)
        # h and w are rounded from sqrt(scale * N * aspect): allow one token of rounding on each side
        lo_s, hi_s = sampler.target_scale
        assert (h - 1) * (w - 1) <= hi_s * H * W and (h + 1) * (w + 1) >= lo_s * H * W
        lo_a, hi_a = sampler.target_aspect
        assert (h - 0.5) / (w + 0.5) <= hi_a and (h + 0.5) / (w - 0.5) >= lo_a
        ch, cw = sampler.block_size(g, sampler.context_scale, sampler.context_aspect)
        assert ch == cw or min(ch, cw) == min(H, W) - 1  # aspect 1 unless clipped by the grid
        assert ch < H and cw < W


def test_target_blocks_are_rectangles():
    sampler = MultiBlock2D(grid=(12, 12))
    g = _gen(5)
    for _ in range(50):
        size = sampler.block_size(g, sampler.target_scale, sampler.target_aspect)
        idx, comp = sampler._place(g, size, None)
        rows, cols = idx // 12, idx % 12
        assert len(idx) == size[0] * size[1]
        assert rows.max() - rows.min() + 1 == size[0] and cols.max() - cols.min() + 1 == size[1]
        assert (~comp).sum() == len(idx)


def test_context_block_scale():
    sampler = MultiBlock2D(grid=(14, 14))
    g = _gen(1)
    for _ in range(100):
        h, w = sampler.block_size(g, sampler.context_scale, sampler.context_aspect)
        assert 0.85 * 196 * 0.7 <= h * w <= 196
        assert abs(h - w) <= 1


def test_seeded_determinism():
    sampler = MultiBlock2D(grid=(12, 12))
    a, b, c = sampler(6, _gen(7)), sampler(6, _gen(7)), sampler(6, _gen(8))
    assert torch.equal(a["context"], b["context"]) and torch.equal(a["target"], b["target"])
    assert not (a["context"].shape == c["context"].shape and torch.equal(a["context"], c["context"]))


@pytest.mark.parametrize("ratio", [0.25, 0.6, 0.9])
def test_random_patch(ratio):
    sampler = RandomPatch(num_tokens=64, mask_ratio=ratio)
    masks = sampler(5, _gen(0))
    ctx, tgt = masks["context"], masks["target"]
    assert tgt.shape == (5, 1, round(64 * ratio)) and ctx.shape == (5, 64 - round(64 * ratio))
    for b in range(5):
        both = torch.cat([ctx[b], tgt[b, 0]]).sort().values
        assert torch.equal(both, torch.arange(64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid=(1, 8)), "at least 2x2"),
        (dict(grid=(8, 8), num_targets=0), "num_targets"),
        (dict(grid=(8, 8), target_scale=(0.3, 0.1)), "target_scale"),
        (dict(grid=(8, 8), min_keep=64), "min_keep"),
    ],
)
def test_multiblock_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiBlock2D(**kwargs)


def test_multiblock_too_small_grid_raises_instead_of_looping():
    sampler = MultiBlock2D(grid=(4, 4))  # target blocks of 1-2 tokens can never exceed min_keep=4
    with pytest.raises(ValueError, match="min_keep"):
        sampler(2, _gen(0))


def test_random_patch_rejects_degenerate_ratio():
    with pytest.raises(ValueError):
        RandomPatch(num_tokens=4, mask_ratio=0.01)


def test_collator_batches_and_resumes():
    image = get_modality("image")
    col = MaskCollator({"image": (image, image.make_config({"image_size": 32, "patch_size": 4}),
                                  MultiBlock2D(grid=(8, 8), min_keep=2))}, seed=3)
    samples = [{"pixel_values": torch.randn(3, 32, 32), "label": i} for i in range(4)]
    col(samples)
    state = col.state_dict()
    nxt = col(samples)
    assert nxt["pixel_values"].shape == (4, 3, 32, 32)
    assert torch.equal(nxt["label"], torch.arange(4))
    col.load_state_dict(state)
    again = col(samples)
    assert torch.equal(nxt["masks"]["image"]["context"], again["masks"]["image"]["context"])
    assert torch.equal(nxt["masks"]["image"]["target"], again["masks"]["image"]["target"])
    assert math.prod(nxt["masks"]["image"]["target"].shape[:2]) == 16


@pytest.mark.parametrize("grid", [(12, 12), (14, 14), (6, 12)])
def test_block_sizes_match_reference_collator(grid):
    """Block sizes equal those of the paper's collator (as shipped in lightly) for the same draws."""
    lightly_collate = pytest.importorskip("lightly.data.ijepa_collate")
    ref = lightly_collate.IJEPAMaskCollator(
        input_size=(grid[0] * 16, grid[1] * 16), patch_size=16, enc_mask_scale=(0.85, 1.0),
        pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5),
    )
    ours = MultiBlock2D(grid=grid)
    g_ref, g_ours = _gen(11), _gen(11)
    for _ in range(200):
        assert ref._sample_block_size(g_ref, (0.15, 0.2), (0.75, 1.5)) == ours.block_size(
            g_ours, ours.target_scale, ours.target_aspect)
        assert ref._sample_block_size(g_ref, (0.85, 1.0), (1.0, 1.0)) == ours.block_size(
            g_ours, ours.context_scale, ours.context_aspect)


# ----------------------------------------------------------------------------- block corners
def _coverage(corners: str, draws: int = 1500, grid: tuple[int, int] = (12, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each patch of ``grid`` is a target / a context token over ``draws`` one-sample
    batches (one sample per batch: no truncation to the batch minimum mixes in)."""
    sampler, g = MultiBlock2D(grid=grid, corners=corners), _gen(0)
    n = grid[0] * grid[1]
    tgt, ctx = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    for _ in range(draws):
        ms = sampler(1, g)
        tgt += torch.bincount(ms["target"].flatten(), minlength=n)
        ctx += torch.bincount(ms["context"].flatten(), minlength=n)
    return tgt.view(grid), ctx.view(grid)


def test_reference_corners_never_reach_the_last_row_and_column():
    """The reference quirk, kept on purpose: corners from [0, H - h) x [0, W - w) leave the last
    row and column of patches out of every target and every context."""
    tgt, ctx = _coverage("reference")
    for counts in (tgt, ctx):
        assert counts[-1].sum() == 0 and counts[:, -1].sum() == 0
        assert (counts[:-1, :-1] > 0).all()  # everything else is reached


def test_full_corners_cover_every_patch_as_target_and_context():
    tgt, ctx = _coverage("full")
    assert (tgt > 0).all() and (ctx > 0).all()
    # and the blocks reach the last row/column about as often as the first
    assert tgt[-1].sum() > 0.5 * tgt[0].sum() and tgt[:, -1].sum() > 0.5 * tgt[:, 0].sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_corners_keep_the_multiblock_invariants(seed):
    sampler = MultiBlock2D(grid=(8, 8), target_scale=(0.1, 0.15), min_keep=2, corners="full")
    ms = sampler(8, _gen(seed))
    assert ms["target"].shape[:2] == (8, 4)
    for b in range(8):
        c = set(ms["context"][b].tolist())
        assert len(c) == ms["context"].shape[1] and all(0 <= i < 64 for i in c)
        for t in ms["target"][b]:
            assert not (c & set(t.tolist()))


def test_default_corners_are_bit_identical_to_the_reference_draw():
    """The default reproduces the sampler as it was before ``corners`` existed: the digest of its
    output for a fixed generator was recorded with that code."""
    import hashlib

    def digest(sampler: MultiBlock2D) -> str:
        g, h = _gen(0), hashlib.sha256()
        for _ in range(5):
            ms = sampler(8, g)
            h.update(ms["context"].numpy().tobytes())
            h.update(ms["target"].numpy().tobytes())
        return h.hexdigest()

    assert digest(MultiBlock2D((12, 12))) == "79dcf9ff29d827eb01bd223be7740cc4bc7af2810bc149f1e75894f876dd7a1b"
    small = dict(grid=(8, 8), target_scale=(0.1, 0.15), min_keep=2)
    assert digest(MultiBlock2D(**small)) == "30350f42dc39516f4ebe2a0ad121c44a5bf04f610c1b709095dfb5524f6d2f2c"
    assert digest(MultiBlock2D(**small, corners="reference")) == digest(MultiBlock2D(**small))
    assert digest(MultiBlock2D(**small, corners="full")) != digest(MultiBlock2D(**small))


def test_mask_corners_option_of_the_plugins():
    with pytest.raises(ValueError, match="corners"):
        MultiBlock2D(grid=(8, 8), corners="inclusive")
    image = get_modality("image")
    for bad in ({"mask_corners": "all"},):
        with pytest.raises(ValueError, match="mask_corners"):
            image.make_config({"image_size": 32, "patch_size": 4, **bad})
    cfg = image.make_config({"image_size": 32, "patch_size": 4})
    assert image.build_mask_sampler(cfg).corners == "reference"
    cfg = image.make_config({"image_size": 32, "patch_size": 4, "mask_corners": "full"})
    assert image.build_mask_sampler(cfg).corners == "full"
    audio = get_modality("audio")
    cfg = audio.make_config({"num_mel_bins": 32, "max_frames": 32, "patch_size": 8, "mask": "multiblock",
                             "mask_corners": "full", "min_keep": 1})
    sampler = audio.build_mask_sampler(cfg)
    assert sampler.full.corners == "full" and sampler._sub(3).corners == "full"
    with pytest.raises(ValueError, match="mask_corners"):
        audio.make_config({"mask_corners": "everywhere"})
