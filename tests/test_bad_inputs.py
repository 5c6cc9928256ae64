"""Bad input on every public entry point, property-based (hypothesis): the processors (random bytes
as image / audio files, arrays of any dtype / shape / values, absurd sample rates, empty, huge and
invalid strings, mixed lists), ``model.embed``, ``fill_spans_text``, ``EmbeddingIndex.search`` and
the CLI. Every call must either succeed with finite output of the right shape or raise ValueError /
TypeError with a one-line message; anything else (another exception, NaN output, a hang) fails.
The inputs tried are counted. Configs: unknown keys, wrong types and impossible values name the
field. ``bench/bad_inputs.py`` drives the same entry points for ``mmjepa bench faults``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmjepa import MMJepaConfig
from mmjepa.engine import load_recipe
from mmjepa.bench.bad_inputs import CLEAR, OK, TOKENIZER_WORDS, World, outcome, run_bad_inputs
from mmjepa.eval.spans import fill_spans_text

pytestmark = pytest.mark.usefixtures("one_thread")

TRIED: Counter = Counter()
KINDS: Counter = Counter()  # (entry point, ok / clear)
FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("bad_inputs"))


def judged(name: str, call, check=None) -> str:
    """Run one input; fail unless it succeeded (finite, ``check``) or raised a clear ValueError / TypeError."""
    TRIED[name] += 1
    kind, detail = outcome(call, check, seconds=20.0)
    assert kind in (OK, CLEAR), f"{name}: {kind}: {detail}"
    KINDS[name, kind] += 1
    return kind


def batch_of(key: str, n: int):
    return lambda out: key in out and out[key].shape[0] == n


def n_items(value) -> int:
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 4:
        return value.shape[0]
    return 1


# ----------------------------------------------------------------------------- strategies
def any_array(max_side: int = 12, max_dims: int = 5):
    dtypes = st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.float16, np.float32,
                              np.float64, np.bool_, np.complex64])
    return dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0,
                                                                      max_side=max_side)))


def corrupted(good: bytes):
    """Random bytes, or a good file: as it is, cut short or with some bytes overwritten."""
    flips = st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=20)
    return st.one_of(
        st.just(good),
        st.binary(max_size=600),
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),
        flips.map(lambda fs: bytes(_flip(good, fs))),
    )


def _flip(good: bytes, flips) -> bytearray:
    b = bytearray(good)
    for i, v in flips:
        b[i] = v
    return b


junk = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.booleans(), st.text(max_size=5),
                 st.binary(max_size=5), st.just({}), st.just([]), st.just(object()))
any_text = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=40)  # lone surrogates too
sample_rates = st.one_of(st.integers(-10, 10 ** 12), st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from([None, "16000", True, [16000], 44101, 8000, 16000]))


# ----------------------------------------------------------------------------- processors
def test_image_processor_takes_any_bytes_and_arrays(world):
    @FAST
    @given(st.one_of(corrupted(world.png), any_array(), junk, st.lists(st.one_of(any_array(6), junk), max_size=3)))
    def run(value):
        judged("image_processor", lambda: world.processor(images=value), batch_of("pixel_values", n_items(value)))

    run()


def test_audio_processor_takes_any_bytes_arrays_and_sample_rates(world):
    @FAST
    @given(st.one_of(corrupted(world.wav), any_array(max_side=3000, max_dims=3), junk,
                     st.builds(lambda a, sr: {"array": a, "sampling_rate": sr}, any_array(2000, 2), sample_rates)),
           sample_rates)
    def run(value, sr):
        judged("audio_processor", lambda: world.processor(audio=value, sampling_rate=sr),
               batch_of("input_features", n_items(value)))

    run()


def test_nan_silent_and_absurdly_sampled_audio_is_refused_clearly(world):
    t = np.arange(8000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for value, sr, match in [(np.where(np.arange(8000) % 7 == 0, np.nan, tone), 16000, "NaN"),
                             (np.full(8000, np.inf, np.float32), 16000, "NaN or infinite"),
                             (tone, float("nan"), "sampling_rate"), (tone, 10 ** 12, "sampling_rate"),
                             (tone, 0, "sampling_rate"), (tone, "16000", "sampling_rate"),
                             (tone, True, "sampling_rate"),
                             (np.tile(tone, 100), 1, "at most 3600 s")]:
        with pytest.raises((ValueError, TypeError), match=match):
            world.processor(audio=value, sampling_rate=sr)
    # a rate sharing no divisor with 16 kHz: resampled through a nearby ratio (torchaudio's exact kernel
    # would be 16000 x 44101 taps, gigabytes), in well under a second
    out = world.processor(audio=tone, sampling_rate=44101)["input_features"]
    assert out.shape == (1, 32, 64) and torch.isfinite(out).all()


def test_text_processor_takes_any_strings(world):
    @FAST
    @given(st.one_of(any_text, st.lists(st.one_of(any_text, junk), max_size=4), junk,
                     st.integers(1, 50_000).map(lambda n: "seven " * n)))
    def run(value):
        judged("text_processor", lambda: world.processor(text=value), batch_of("input_ids", n_items(value)))

    run()


# ----------------------------------------------------------------------------- the model
def test_embed_takes_wrong_shapes_dtypes_and_values(world):
    dtypes = st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int64, torch.int32, torch.bool,
                              torch.uint8])
    shapes = st.lists(st.integers(0, 20), max_size=5)
    right = {"pixel_values": [2, 3, 16, 16], "input_features": [2, 32, 64], "input_ids": [2, 12]}

    def tensor(key):
        return st.tuples(st.one_of(st.just(right[key]), shapes), dtypes,
                         st.sampled_from([0.0, 1.0, -70.0, 1e30, float("nan"), float("inf")]),
                         st.integers(-5, 70)).map(lambda t: _make(key, *t))

    batch = st.fixed_dictionaries({}, optional={
        "pixel_values": st.one_of(tensor("pixel_values"), junk),
        "input_features": st.one_of(tensor("input_features"), junk),
        "input_ids": st.one_of(tensor("input_ids"), junk),
        "attention_mask": st.one_of(st.sampled_from([torch.ones(2, 12), torch.zeros(2, 12), torch.ones(3, 5)]), junk),
        "input_features_valid": st.one_of(st.sampled_from([torch.ones(2, 8, dtype=torch.bool),
                                                           torch.zeros(2, 8, dtype=torch.bool), torch.ones(2, 3)]),
                                          junk)})

    def check(out):
        return all(e.shape == (2, 32) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-4) for e in out.values())

    @settings(FAST, max_examples=200)
    @given(batch)
    def run(b):
        judged("embed", lambda: world.model.embed(**b), check)

    run()


def _make(key, shape, dtype, spike, token):
    if key == "input_ids":
        t = torch.zeros(shape, dtype=dtype) if dtype.is_floating_point else torch.full(shape, token, dtype=torch.long)
        return t.to(dtype) if dtype != torch.bool else t
    t = torch.rand(shape).to(dtype) if dtype.is_floating_point else torch.randint(0, 2, shape).to(dtype)
    if t.numel() and t.is_floating_point():
        t.view(-1)[0] = spike
    return t


def test_fill_spans_text_takes_any_texts_and_top_k(world):
    words = st.lists(st.sampled_from(TOKENIZER_WORDS + ["<mask>"] * 4 + ["<mask><mask>", "<", "mask>", "é"]),
                     max_size=30).map(" ".join)
    texts = st.one_of(words, any_text, st.lists(st.one_of(words, junk), max_size=3), junk,
                      st.integers(1, 5000).map(lambda n: "<mask> " + "seven " * n))
    top_k = st.one_of(st.integers(-2, 10 ** 6), st.sampled_from([None, 2.5, "3", True]))

    def check(out):
        return all(0.0 <= p <= 1.0 + 1e-6 and c for text in out for span in text for c, p in span)

    @FAST
    @given(texts, top_k)
    def run(value, k):
        judged("fill_spans_text", lambda: fill_spans_text(world.model, world.tokenizer, value, top_k=k), check)

    run()


# ----------------------------------------------------------------------------- search
def test_search_takes_any_k_queries_and_targets(world):
    ks = st.one_of(st.integers(1, 10), st.integers(-3, 10 ** 12), st.sampled_from([None, 2.5, "5", True, np.int64(2)]))
    targets = st.sampled_from(["image", "text", None, "audio", "video", 3])
    queries = st.one_of(st.sampled_from([torch.randn(3, 32), torch.randn(0, 32), torch.randn(32), torch.randn(2, 31),
                                         torch.randn(2, 3, 32),
                                         np.random.default_rng(0).random((2, 32)), [[0.0] * 32],
                                         torch.full((1, 32), float("nan")), torch.randint(0, 2, (1, 32)),
                                         torch.zeros(1, 32, dtype=torch.bool)]), junk)
    raw = st.one_of(st.builds(dict, text=st.one_of(any_text, st.lists(any_text, max_size=3), junk)),
                    st.builds(dict, images=st.one_of(corrupted(world.png), junk)),
                    st.sampled_from([{}, {"audio": world.wav}, {"video": 1},
                                     {"images": world.png, "text": "a red car"}]))

    def check(out):
        return isinstance(out, list) and all(isinstance(key, str) and -1.001 <= s <= 1.001
                                             for row in out for key, s in row)

    @settings(FAST, max_examples=200)
    @given(ks, targets, st.one_of(queries.map(lambda q: ("embeddings", q)), raw.map(lambda r: ("raw", r))),
           st.sampled_from(["embedding", "predicted", "nope"]))
    def run(k, target, query, mode):
        kind, q = query
        if kind == "embeddings":
            judged("search", lambda: world.index.search_embeddings(q, target=target, k=k), check)
        else:
            judged("search", lambda: world.index.search(target=target, k=k, mode=mode, **q), check)

    run()


def test_a_search_of_the_right_kind_returns_capped_ranked_hits(world):
    hits = world.index.search(target="text", k=10 ** 9, text="the number seven")[0]
    assert len(hits) == 3 and hits[0][0] == "the number seven" and hits[0][1] >= hits[1][1] >= hits[2][1]
    assert world.index.search_embeddings(torch.randn(0, 32), target="image", k=2) == []


# ----------------------------------------------------------------------------- the CLI
def test_the_cli_answers_bad_command_lines_with_one_line_and_exit_code_2(world, capsys):
    import mmjepa_cli

    missing = world.missing
    heads = st.sampled_from([["train", f"{missing}.yaml"], ["embed", missing], ["search", missing],
                             ["export", missing], ["eval", "spans"], ["convert", "ijepa", f"{missing}.pth.tar"],
                             ["push", missing, "org/name", "--dry-run"], ["nope"], ["eval"], []])
    tails = st.lists(st.sampled_from(["--model", missing, "--k", "-5", "abc=1", "--modality", "video", "--output",
                                      "--target", "--batch-size", "x", "--", "é", "-"]), max_size=4)

    @settings(FAST, max_examples=25)
    @given(heads, tails)
    def run(head, tail):
        TRIED["cli"] += 1
        argv = head + tail
        try:
            code = mmjepa_cli.main(argv)
        except SystemExit as e:  # argparse: usage, then one error line
            code = e.code
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, argv
        assert code == (0 if not argv else 2), (argv, code, err)
        if code == 2:
            assert err.strip().splitlines()[-1].startswith("mmjepa"), (argv, err)

    run()


# ----------------------------------------------------------------------------- configs
BASE = dict(modalities={"image": {"image_size": 16, "patch_size": 4}}, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, predictor_hidden_size=16, predictor_num_hidden_layers=1,
            predictor_num_attention_heads=2)


@pytest.mark.parametrize("change, error, message", [
    ({"hiden_size": 32}, ValueError, r"unknown MMJepaConfig option\(s\) \['hiden_size'\] \(did you mean 'hidden_size'"),
    ({"hidden_size": "32"}, TypeError, "hidden_size must be an int, got str"),
    ({"num_hidden_layers": True}, TypeError, "num_hidden_layers must be an int, got bool"),
    ({"num_hidden_layers": 0}, ValueError, "num_hidden_layers must be >= 1"),
    ({"mlp_ratio": -1.0}, ValueError, "mlp_ratio must be a finite number > 0"),
    ({"layer_norm_eps": float("nan")}, ValueError, "layer_norm_eps must be a finite number"),
    ({"qkv_bias": "yes"}, TypeError, "qkv_bias must be true or false"),
    ({"num_attention_heads": 3}, ValueError, r"hidden_size \(32\) must be a positive multiple of its number of heads"),
    ({"ema_momentum_start": 1.5}, ValueError, "ema_momentum_start"),
    ({"modalities": {"image": {"image_size": 17, "patch_size": 4}}}, ValueError,
     "modalities.image: image_size 17 must be a multiple of patch_size 4"),
    ({"modalities": {"image": {"image_size": 16, "patch_size": 4, "colour": 1}}}, ValueError,
     r"modalities.image: unknown image modality option\(s\) \['colour'\]"),
    ({"modalities": {"image": {"image_size": 16, "patch_size": 4, "resize": 3}}}, ValueError,
     "modalities.image: image modality option 'resize' must be a string, got int"),
    ({"modalities": {"video": {}}}, ValueError, "unknown modality 'video'"),
    ({"modalities": {"text": {"vocab_size": 60, "max_length": 8, "mask_token_id": 60}}}, ValueError,
     r"modalities.text: mask_token_id \(60\) must lie in \[0, vocab_size=60\)"),
    ({"objectives": {"x": {"type": "nope"}}}, ValueError, "objectives.x: unknown objective type 'nope'"),
    ({"objectives": {"intra": {"wieght": 1}}}, ValueError, r"objectives.intra: unknown intra objective option\(s\)"),
    ({"objectives": {"intra": {"weight": "heavy"}}}, ValueError,
     "objectives.intra: intra objective option 'weight' must be a number, got str"),
])
def test_bad_configs_name_the_field(change, error, message):
    with pytest.raises(error, match=message):
        MMJepaConfig(**{**BASE, **change})


RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "multimodal" / "spoken_digits_cpu.yaml"


@pytest.mark.parametrize("override, message", [  # those tests/test_recipes.py does not already try
    ("optim.lr=-1", "optim.lr must be >= 0"),
    ("model.modalities.image.patch_size=5", "model.modalities.image.image_size 64 must be a multiple of patch_size 5"),
    ("model.num_attention_heads=5", r"model: hidden_size \(128\) must be a positive multiple of its number of heads"),
    ("model.modalities.text.mask_token_id=100000", r"model.modalities.text.mask_token_id \(100000\) must lie in"),
    ("model.modalities.audio.sample_rate=-5", "model.modalities.audio.sample_rate must be > 0"),
    ("model.objectives.intra.weight=heavy", "model.objectives.intra.weight: Value 'heavy'"),
    ("model.hidden_size=-8", "hidden_size must be >= 1"),
])
def test_bad_recipe_values_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(RECIPE, [override])


# ----------------------------------------------------------------------------- counted
def test_the_bench_counts_inputs_and_finds_no_crash():
    result = run_bad_inputs(15, seed=1, entry_points=("image_processor", "audio_processor", "search"))
    assert result["tried"] == 45 and result["crashes"] == 0 and result["unclear_errors"] == 0, result
    assert set(result["by_entry_point"]) == {"image_processor", "audio_processor", "search"}


def test_zz_inputs_tried_are_counted():
    """Runs last in this file: every entry point above was driven with many inputs."""
    if not TRIED:
        pytest.skip("run with the tests above")
    print(f"bad inputs tried: {sum(TRIED.values())} {dict(TRIED)}; outcomes {dict(KINDS)}")
    assert all(n >= 25 for n in TRIED.values()), TRIED
    assert all(KINDS[name, OK] and KINDS[name, CLEAR] for name in TRIED if name != "cli"), KINDS  # both kinds met
