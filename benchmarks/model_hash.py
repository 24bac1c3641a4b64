"""What checking the converted model's sha256 on every load costs.

``load_bundled`` hashes every file of the cached conversion before loading it, so that a
tampered or truncated cache is converted again instead of used. Against the standard way
(transformers' ``from_pretrained`` of the same folder, the stamp trusted), in one process, the
arms taking turns so that a busy spell falls on both:

  trusted   from_pretrained of the cached folder (the model and the processor)
  checked   load_bundled: every file hashed, then the same from_pretrained

A stage loads the bundled model once or twice (score, evaluate; finetune also for its anchor),
so the difference is what each stage pays.

    python benchmarks/model_hash.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from transformers import WhisperForConditionalGeneration, WhisperProcessor

from pipeline.models import bundled


def trusted(cache: Path) -> None:
    folder = cache / bundled.CACHE_NAME
    WhisperForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, use_safetensors=True
    )
    WhisperProcessor.from_pretrained(folder, local_files_only=True)


def checked(cache: Path) -> None:
    bundled.load_bundled(cache)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        bundled.load_bundled(cache)  # the conversion itself is not timed
        size = sum(p.stat().st_size for p in (cache / bundled.CACHE_NAME).iterdir())
        times: dict[str, list[float]] = {"trusted": [], "checked": []}
        arms = {"trusted": trusted, "checked": checked}
        for r in range(args.rounds):
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for name in order:
                start = time.perf_counter()
                arms[name](cache)
                times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(args.rounds):
            bundled.is_current(cache / bundled.CACHE_NAME)
        hash_s = (time.perf_counter() - start) / args.rounds
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "files_mb": size / 1e6,
        "hash_s": hash_s,
        "trusted_s": median["trusted"],
        "checked_s": median["checked"],
        "ratio": median["checked"] / median["trusted"],
    }
    print(
        f"conversion: {result['files_mb']:.0f} MB; hashing it: {hash_s:.3f} s\n"
        f"load, trusted (from_pretrained): {median['trusted']:.3f} s (median of {args.rounds})\n"
        f"load, checked (load_bundled):    {median['checked']:.3f} s\n"
        f"ratio checked / trusted: {result['ratio']:.2f}x"
    )
    return result


if __name__ == "__main__":
    main()
