"""Bad input on every public entry point, counted: ``run_bad_inputs(n)`` drives seeded random
generators of bad (and some good) inputs through the processors (image, audio, text), ``model.embed``,
``fill_spans_text``, ``EmbeddingIndex.search`` / ``search_embeddings`` and the CLI, each input in
process under a time limit, and counts what happened.

An input's outcome is one of
- ``ok``: it returned finite output of the right shape;
- ``clear``: a ValueError or TypeError whose message is one non-empty line;
- ``unclear``: a ValueError or TypeError with an empty or multi-line message;
- ``crash``: anything else: another exception, NaN / infinite or misshapen output, a time-out.

The fault-injection suite reports ``tried`` as ``bad_inputs_tried``; tests/test_bad_inputs.py
drives the same entry points with hypothesis and uses :func:`outcome` to judge each call.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import signal
import string
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

CLEAR, OK, UNCLEAR, CRASH = "clear", "ok", "unclear", "crash"
ENTRY_POINTS = ("image_processor", "audio_processor", "text_processor", "embed", "fill_spans_text", "search", "cli")


class TimeLimit(Exception):
    """An input ran past its time limit (counted as a crash: a hang)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; in the main thread of a Unix process only,
    elsewhere the block runs unlimited and a slow call is judged by its duration afterwards)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise TimeLimit(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def finite(x: Any) -> bool:
    """Every tensor / array / float inside ``x`` (dicts, lists, tuples) is finite."""
    if isinstance(x, torch.Tensor):
        return not x.is_floating_point() or bool(torch.isfinite(x).all())
    if isinstance(x, np.ndarray):
        return x.dtype.kind not in "fc" or bool(np.isfinite(x).all())
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict) or hasattr(x, "items"):
        return all(finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(finite(v) for v in x)
    return True


def outcome(call: Callable[[], Any], check: Callable[[Any], bool] | None = None,
            seconds: float = 10.0) -> tuple[str, str]:
    """Run ``call`` and judge it -> (kind, detail): ``ok`` when it returns something that is finite
    and passes ``check``; ``clear`` / ``unclear`` for a ValueError or TypeError with a one-line /
    empty or multi-line message; ``crash`` for anything else (the detail says what)."""
    start = time.perf_counter()
    try:
        with time_limit(seconds):
            out = call()
    except TimeLimit as err:
        return CRASH, f"hang: {err}"
    except (ValueError, TypeError) as err:
        msg = str(err).strip()
        if not msg or "\n" in msg:
            return UNCLEAR, f"{type(err).__name__}: {msg!r}"
        return CLEAR, f"{type(err).__name__}: {msg}"
    except Exception as err:  # noqa: BLE001 - that is what is being counted
        return CRASH, f"{type(err).__name__}: {str(err)[:300]}"
    if time.perf_counter() - start > seconds:
        return CRASH, f"hang: took {time.perf_counter() - start:.1f} s"
    if not finite(out):
        return CRASH, "non-finite output"
    if check is not None:
        try:
            good = check(out)
        except Exception as err:  # noqa: BLE001
            return CRASH, f"output not of the expected kind: {type(err).__name__}: {err}"
        if not good:
            return CRASH, "output not of the expected shape"
    return OK, ""


# ----------------------------------------------------------------------------- the tiny world
TOKENIZER_WORDS = "zero one two three four five six seven eight nine the number a red car is spoken".split()


class World:
    """A tiny tri-modal model (with readout and pooled objectives), its processor and tokenizer, a
    gallery of a few images and strings: what the entry points are driven against."""

    def __init__(self, folder: str | Path):
        from mmjepa import MMJepaConfig, MMJepaModel, MMJepaProcessor
        from mmjepa.retrieval import EmbeddingIndex, string_items
        from mmjepa.tokenizer import train_tokenizer

        folder = Path(folder)
        rng = np.random.default_rng(0)
        texts = [" ".join(rng.choice(TOKENIZER_WORDS, 6)) for _ in range(300)]
        self.tokenizer = train_tokenizer(texts=texts, vocab_size=60)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        mods = {"image": {"image_size": 16, "patch_size": 4},
                "audio": {"num_mel_bins": 32, "max_frames": 64, "patch_size": 16},
                "text": {"vocab_size": 60, "max_length": 12, "tokenizer": str(folder / "tokenizer")}}
        self.config = MMJepaConfig(modalities=mods, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   predictor_hidden_size=16, predictor_num_hidden_layers=1,
                                   predictor_num_attention_heads=2,
                                   objectives={"intra": {}, "pooled": {"type": "pooled"},
                                               "readout": {"type": "readout", "modality": "text"}})
        torch.manual_seed(0)
        self.model = MMJepaModel(self.config).eval()
        self.processor = MMJepaProcessor.from_config(self.config)
        items = [{"__key__": f"img{i}", "image": rng.random((16, 16, 3)).astype(np.float32)} for i in range(4)]
        items += list(string_items(["the number seven", "a red car", "nine is spoken"], "text"))
        self.index = EmbeddingIndex.build(self.model, items, ["image", "text"], progress=False)
        self.folder = folder
        png = io.BytesIO()
        from PIL import Image
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(png, format="PNG")
        self.png = png.getvalue()
        import soundfile as sf
        wav = io.BytesIO()
        t = np.arange(8000) / 16000
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
        self.wav = wav.getvalue()
        self.missing = str(folder / "no" / "such" / "file")


# ----------------------------------------------------------------------------- generators
DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.float16, np.float32, np.float64, np.bool_,
          np.complex64, object, np.str_)
SAMPLE_RATES = (None, 0, -1, 1, 7, 8000, 16000, 22050, 44101, 96000, 10 ** 9, 2 ** 63, float("nan"), float("inf"),
                "16000", True, 16000.5, [16000])


def _text(r: random.Random, n: int | None = None) -> str:
    n = r.choice((0, 1, 3, 10, 40, 200)) if n is None else n
    pool = r.choice((string.printable, "abc <mask> ", "\x00\x01\x7f\u200b\ufeff", "日本語テキスト",
                     "".join(map(chr, range(0xd800, 0xd810))),  # lone surrogates
                     " ".join(TOKENIZER_WORDS)))
    if n > 400:  # a long text: a random chunk repeated (drawing every character would dominate the run)
        chunk = "".join(r.choice(pool) for _ in range(200))
        return (chunk * (n // 200 + 1))[:n]
    return "".join(r.choice(pool) for _ in range(n))


def _array(r: random.Random, max_elements: int = 20000) -> Any:
    ndim = r.choice((0, 1, 1, 2, 3, 3, 4, 5))
    shape = [r.choice((0, 1, 2, 3, 4, 5, 16, 31, 100, 4000)) for _ in range(ndim)]
    while math.prod(shape) > max_elements:
        shape[r.randrange(ndim)] //= 2
    dtype = r.choice(DTYPES)
    g = np.random.default_rng(r.randrange(2 ** 32))
    kind = r.choice(("unit", "big", "neg", "nan", "inf", "zero"))
    base = {"unit": g.random(shape), "big": g.random(shape) * 1e6, "neg": -g.random(shape) * 300,
            "nan": np.full(shape, np.nan), "inf": np.full(shape, np.inf), "zero": np.zeros(shape)}[kind]
    base = np.asarray(base)
    if dtype is object:
        return base.astype(object)
    if dtype is np.str_:
        return base.astype(str)
    base = np.asarray(base)
    with np.errstate(all="ignore"):
        arr = np.asarray(base.astype(dtype))
    return torch.from_numpy(arr) if r.random() < 0.3 and dtype not in (np.uint16,) and arr.dtype.kind != "c" else arr


def _bytes(r: random.Random, good: bytes) -> bytes:
    kind = r.choice(("random", "truncated", "flipped", "empty", "good"))
    if kind == "random":
        return bytes(r.randrange(256) for _ in range(r.choice((1, 8, 64, 1000))))
    if kind == "truncated":
        return good[:r.randrange(len(good))]
    if kind == "flipped":
        b = bytearray(good)
        for _ in range(r.choice((1, 5, 50))):
            b[r.randrange(len(b))] = r.randrange(256)
        return bytes(b)
    return b"" if kind == "empty" else good


def _misc(r: random.Random, w: World) -> Any:
    return r.choice((None, 0, -1, 3.5, float("nan"), True, "", w.missing, str(w.folder), {}, {"array": None}, [],
                     [[]], object(), b"", bytearray(3), [None], [1, "a", None]))


def image_input(r: random.Random, w: World) -> Callable[[], Any]:
    kind = r.choice(("bytes", "bytes", "array", "array", "array", "misc", "list"))
    if kind == "bytes":
        value = _bytes(r, w.png)
    elif kind == "array":
        value = _array(r)
    elif kind == "misc":
        value = _misc(r, w)
    else:
        value = [r.choice((_bytes(r, w.png), _array(r, 3000), _misc(r, w))) for _ in range(r.choice((0, 1, 3)))]
    return lambda: w.processor(images=value)


def audio_input(r: random.Random, w: World) -> Callable[[], Any]:
    kind = r.choice(("bytes", "bytes", "array", "array", "array", "dict", "misc", "list"))
    sr = r.choice(SAMPLE_RATES)
    if kind == "bytes":
        value = _bytes(r, w.wav)
    elif kind == "array":
        value = _array(r, 40000)
    elif kind == "dict":
        value = {"array": _array(r, 40000), "sampling_rate": r.choice(SAMPLE_RATES)}
    elif kind == "misc":
        value = _misc(r, w)
    else:
        value = [r.choice((_bytes(r, w.wav), _array(r, 20000), _misc(r, w))) for _ in range(r.choice((0, 1, 3)))]
    return lambda: w.processor(audio=value, sampling_rate=sr)


def text_input(r: random.Random, w: World) -> Callable[[], Any]:
    kind = r.choice(("text", "text", "huge", "list", "misc"))
    if kind == "text":
        value: Any = _text(r)
    elif kind == "huge":
        value = _text(r, r.choice((2_000, 20_000)))
    elif kind == "list":
        value = [r.choice((_text(r), _text(r), None, 3, b"bytes", ["nested"])) for _ in range(r.choice((0, 1, 4)))]
    else:
        value = _misc(r, w)
    return lambda: w.processor(text=value)


def embed_input(r: random.Random, w: World) -> Callable[[], Any]:
    batch: dict[str, Any] = {}
    b = r.choice((0, 1, 2, 3))
    for key, shape in (("pixel_values", (b, 3, 16, 16)), ("input_features", (b, 32, 64)), ("input_ids", (b, 12))):
        if r.random() < 0.5:
            continue
        kind = r.choice(("right", "shape", "dtype", "values", "misc"))
        if kind == "misc":
            batch[key] = _misc(r, w)
            continue
        s = list(shape)
        if kind == "shape":
            s = [r.choice((0, 1, 2, 5, 13, 64)) for _ in range(r.choice((0, 1, 2, 3, 4, 5)))]
            while math.prod(s) > 100_000:  # wrong, not big: the generator's own tensors stay small
                s[r.randrange(len(s))] //= 2
        if key == "input_ids":
            lo, hi = (-5, 70) if kind == "values" else (0, 60)
            t = torch.randint(lo, hi, s) if kind != "dtype" else torch.rand(s)
        else:
            t = torch.rand(s) if kind != "dtype" else torch.randint(0, 3, s)
            if kind == "values":
                t = t.masked_fill(torch.rand(s) < 0.3, r.choice((float("nan"), float("inf"), 1e30)))
        batch[key] = t
        if key == "input_ids" and r.random() < 0.5:
            batch["attention_mask"] = r.choice((torch.ones(s, dtype=torch.long), torch.zeros(s, dtype=torch.long),
                                                torch.ones(3, 7), _misc(r, w)))
        if key == "input_features" and r.random() < 0.5:
            batch["input_features_valid"] = r.choice((torch.ones(b, 8, dtype=torch.bool),
                                                      torch.zeros(b, 8, dtype=torch.bool), torch.ones(2, 3),
                                                      _misc(r, w)))
    if r.random() < 0.1:
        batch["something_else"] = 1
    n = {k: v.shape[0] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim()}

    def check(out: dict[str, torch.Tensor]) -> bool:
        return all(e.dim() == 2 and e.shape[1] == w.config.hidden_size and e.shape[0] in n.values()
                   for e in out.values())
    return (lambda: w.model.embed(**batch)), check


def spans_input(r: random.Random, w: World) -> Callable[[], Any]:
    from mmjepa.eval.spans import fill_spans_text

    def one() -> Any:
        kind = r.choice(("masked", "masked", "plain", "huge", "misc"))
        if kind == "masked":
            words = [r.choice(TOKENIZER_WORDS + ["<mask>"] * 3 + [_text(r, 3)]) for _ in range(r.choice((1, 3, 8, 30)))]
            return " ".join(words)
        if kind == "plain":
            return _text(r)
        if kind == "huge":
            return "<mask> " + _text(r, r.choice((2_000, 20_000)))
        return _misc(r, w)
    texts = one() if r.random() < 0.5 else [one() for _ in range(r.choice((0, 1, 3)))]
    top_k = r.choice((5, 5, 1, 0, -1, 10 ** 6, 2.5, "3", None))
    return lambda: fill_spans_text(w.model, w.tokenizer, texts, top_k=top_k)


def search_input(r: random.Random, w: World) -> Callable[[], Any]:
    k = r.choice((1, 3, 5, 10 ** 9, 0, -3, 2.5, "5", None, True, np.int64(2)))
    target = r.choice(("image", "text", "image", None, "audio", "video", 3))
    if r.random() < 0.5:
        queries = r.choice((torch.randn(r.choice((0, 1, 4)), 32), torch.randn(32), torch.randn(2, 31),
                            torch.randn(2, 3, 32), np.random.default_rng(0).random((2, 32)), [[0.0] * 32],
                            torch.full((1, 32), float("nan")), torch.randint(0, 2, (1, 32)),
                            torch.zeros(1, 32, dtype=torch.bool), _misc(r, w)))
        call = lambda: w.index.search_embeddings(queries, target=target, k=k)  # noqa: E731
    else:
        kw = r.choice(({"text": _text(r)}, {"text": [_text(r), _text(r)]}, {"text": []}, {"images": w.png},
                       {"images": _bytes(r, w.png)}, {"images": _array(r, 3000)}, {"text": _misc(r, w)},
                       {"audio": w.wav}, {}, {"text": "the number seven", "images": w.png}, {"video": 1}))
        mode = r.choice(("embedding", "embedding", "predicted", "nope", None))
        call = lambda: w.index.search(target=target, k=k, mode=mode, **kw)  # noqa: E731

    def check(out: Any) -> bool:
        return isinstance(out, list) and all(isinstance(row, list) and all(
            isinstance(key, str) and isinstance(s, float) for key, s in row) for row in out)
    return call, check


CLI_FORMS = (("train", "{missing}.yaml"), ("train", "{missing}.yaml", "optim.lr=-1"), ("embed", "{missing}"),
             ("search", "{missing}"), ("export", "{missing}"), ("eval", "spans"), ("eval", "probe"),
             ("eval", "retrieval"), ("eval", "zeroshot"), ("convert", "ijepa", "{missing}.pth.tar"),
             ("convert", "to-hf", "{missing}"), ("push", "{missing}", "org/name", "--dry-run"), ("bench",),
             ("nope",), ("--version",), ())
CLI_TOKENS = ("--model", "--text", "--k", "-k", "0", "-5", "abc", "--modality", "video", "--output", "--help",
              "--target", "image", "--batch-size", "x=y", "=", "--", "--quiet", "{missing}", "\u00e9\u00e8", "-",
              "--backend", "nope", "--seed", "1e99")


def cli_input(r: random.Random, w: World) -> Callable[[], Any]:
    import mmjepa_cli

    argv = [a.format(missing=w.missing) for a in r.choice(CLI_FORMS)]
    for _ in range(r.choice((0, 0, 1, 2, 4))):
        argv.insert(r.randrange(len(argv) + 1) if argv else 0, r.choice(CLI_TOKENS).format(missing=w.missing))
    argv = [a for a in argv if a != "--help" or r.random() < 0.2]

    def call() -> int:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), offline():
            try:
                code = mmjepa_cli.main(list(argv))
            except SystemExit as e:  # argparse: usage and one error line, exit code 2 (0 for --help)
                code = e.code if isinstance(e.code, int) else 2
        text = err.getvalue().strip()
        if "Traceback" in text + out.getvalue():
            raise RuntimeError(f"mmjepa {' '.join(argv)} printed a traceback")
        if code not in (0, 2):
            raise RuntimeError(f"mmjepa {' '.join(argv)}: exit code {code}")
        if code == 2:
            last = text.splitlines()[-1] if text else ""
            if not last.startswith("mmjepa"):
                raise ValueError(f"mmjepa {' '.join(argv)}: exit code 2 without a one-line reason:\n{text}")
            if argv and argv[0] in mmjepa_cli.COMMANDS and "usage:" not in text and len(text.splitlines()) != 1:
                raise ValueError(f"mmjepa {' '.join(argv)}: more than one line:\n{text}")
        return code
    return call


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No Hub look-ups: a word of a random command line taken as a model id fails at once (with
    network it would be looked up; without, retried for seconds)."""
    import os

    import huggingface_hub.constants as hub

    saved = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], hub.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        hub.HF_HUB_OFFLINE = saved[1]


def _as_pair(made: Any) -> tuple[Callable[[], Any], Callable[[Any], bool] | None]:
    return made if isinstance(made, tuple) else (made, None)


def _processor_check(key: str) -> Callable[[Any], bool]:
    return lambda out: key in out and out[key].dim() >= 2 and out[key].shape[0] >= 1


GENERATORS: dict[str, tuple[Callable[[random.Random, World], Any], Callable[[Any], bool] | None]] = {
    "image_processor": (image_input, _processor_check("pixel_values")),
    "audio_processor": (audio_input, _processor_check("input_features")),
    "text_processor": (text_input, _processor_check("input_ids")),
    "embed": (embed_input, None),
    "fill_spans_text": (spans_input, lambda out: isinstance(out, list) and all(
        isinstance(span, list) and all(isinstance(c, str) and 0.0 <= p <= 1.0 + 1e-6 for c, p in span)
        for text in out for span in text)),
    "search": (search_input, None),
    "cli": (cli_input, None),
}


def run_bad_inputs(n: int, seed: int = 0, entry_points: tuple[str, ...] | None = None,
                   seconds_per_input: float = 10.0, examples: int = 3) -> dict[str, Any]:
    """Drive ``n`` generated inputs through each entry point (``entry_points``: default all of
    :data:`ENTRY_POINTS`; the CLI gets ``n // 10``, each call parses a command line and imports)
    -> ``{"tried", "ok", "clear_errors", "unclear_errors", "crashes", "seconds", "by_entry_point":
    {name: {...same counts..., "examples": [what went wrong, up to ``examples``]}}}``."""
    import warnings

    names = tuple(entry_points or ENTRY_POINTS)
    unknown = sorted(set(names) - set(GENERATORS))
    if unknown:
        raise ValueError(f"unknown entry point(s) {unknown}; known: {list(GENERATORS)}")
    start = time.perf_counter()
    by: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        world = World(tmp)
        for name in names:
            make, check = GENERATORS[name]
            r = random.Random(f"{seed}:{name}")
            counts = {OK: 0, CLEAR: 0, UNCLEAR: 0, CRASH: 0}
            bad: list[str] = []
            began = time.perf_counter()
            for _ in range(n // 10 if name == "cli" else n):
                call, own_check = _as_pair(make(r, world))
                kind, detail = outcome(call, own_check or check, seconds_per_input)
                counts[kind] += 1
                if kind in (UNCLEAR, CRASH) and len(bad) < examples:
                    bad.append(detail[:500])
            by[name] = {"tried": sum(counts.values()), "ok": counts[OK], "clear_errors": counts[CLEAR],
                        "unclear_errors": counts[UNCLEAR], "crashes": counts[CRASH],
                        "seconds": round(time.perf_counter() - began, 1), "examples": bad}
    total = {k: sum(v[k] for v in by.values()) for k in ("tried", "ok", "clear_errors", "unclear_errors", "crashes")}
    return {**total, "seconds": round(time.perf_counter() - start, 1), "by_entry_point": by}


if __name__ == "__main__":  # python -m mmjepa.bench.bad_inputs [N]
    import json
    import sys

    torch.set_num_threads(1)
    print(json.dumps(run_bad_inputs(int(sys.argv[1]) if len(sys.argv) > 1 else 200), indent=2))
