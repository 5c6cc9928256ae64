"""``python -m mmjepa.modalities.audio_stats stats FILE... [--num-mel-bins 128]``: print the log-mel
mean/std of audio files, to use as ``AudioConfig(mean=..., std=...)``.

A module of its own: ``import mmjepa`` imports the audio plug-in (to register its feature
extractor with transformers), so the plug-in itself cannot also run as ``__main__``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .audio import AudioConfig, compute_normalization_stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmjepa.modalities.audio_stats")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="log-mel normalisation statistics of audio files")
    st.add_argument("files", nargs="+")
    st.add_argument("--num-mel-bins", type=int, default=128)
    args = parser.parse_args(argv)
    mean, std = compute_normalization_stats(args.files, AudioConfig(num_mel_bins=args.num_mel_bins))
    print(json.dumps({"mean": mean, "std": std}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
