"""What a CLIP prompt search costs on this machine: the real ViT-B-16-plus-240 architecture (SWSA's and
WinCLIP's model) with random weights, since no CLIP weights can be fetched here; the costs are the
architecture's, the scores mean nothing.

Per image: the image tower's forward pass (embedding and patch tokens in one pass), then, with the features
cached, a zero-shot score, a zero-shot map and a few-shot score and map (visual memory of the normal images'
patch tokens); per prompt: the text tower. Then a prompt search as `selection.search --space clip` runs it
once the images are encoded: every prompt set of the clip kind fitted and scored on a synthetic set
(held-out normals + anomalies), trials per second, first with the prompts not yet encoded, then with them.

    python benchmarks/clip_speed.py [--images 16] [--data-root ../shared/data/mvtec_ad]
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from detectors import ClipDetector, FeatureCache, load_rgb
from selection.candidates import DEFAULT_CLIP_MODEL
from selection.prompts import PROMPT_SETS, prompt_set


def _seconds(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="bottle images scored (and as many normals fitted)")
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"))
    args = parser.parse_args()
    paths = sorted((Path(args.data_root) / "bottle" / "test").glob("*/*.png"))
    normals = sorted((Path(args.data_root) / "bottle" / "train" / "good").glob("*.png"))
    if len(paths) < args.images or len(normals) < args.images:
        raise SystemExit(f"need {args.images} bottle test and train images under {args.data_root}")
    rng = np.random.default_rng(0)
    images = [load_rgb(paths[i]) for i in sorted(rng.choice(len(paths), args.images, replace=False))]
    bank = [load_rgb(path) for path in normals[:args.images]]

    features = FeatureCache()
    model = DEFAULT_CLIP_MODEL
    build = _seconds(lambda: features.backbone(model, "random"))
    backbone = features.backbone(model, "random")
    print(f"{model} with random weights: {backbone.n_params / 1e6:.0f} M parameters, input {backbone.input_size} px; "
          f"built in {build:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}\n")

    def detector(prompts: str, few_shot: bool = False) -> ClipDetector:
        normal, anomalous = prompt_set(prompts, "bottle")
        return ClipDetector(model, "random", normal, anomalous, few_shot=few_shot, features=features)

    forward = _seconds(lambda: features.feature_maps(model, "random", ["patch"], images + bank)) / (2 * args.images)
    zero_shot, few_shot = detector("ensemble").fit(bank), detector("ensemble", few_shot=True).fit(bank)
    rows = [("image tower forward pass (embedding + patch tokens)", forward),
            ("zero-shot score, features cached", _seconds(lambda: zero_shot.anomaly_scores(images)) / args.images),
            ("zero-shot score + map, features cached",
             _seconds(lambda: zero_shot.scores_and_maps(images)) / args.images),
            ("few-shot score + map, features cached",
             _seconds(lambda: few_shot.scores_and_maps(images)) / args.images)]
    print("| per image | seconds | / forward pass |\n|---|---|---|")
    for step, seconds in rows:
        print(f"| {step} | {seconds:.4f} | {seconds / forward:.3f} |")

    towers = backbone.network
    prompts = [p for name in PROMPT_SETS for state in prompt_set(name, "bottle") for p in state]
    distinct = list(dict.fromkeys(prompts))
    text = _seconds(lambda: towers.text_features(distinct)) / len(distinct)
    print(f"\ntext tower: {text:.4f} s per prompt ({len(distinct)} distinct prompts in the clip kind's sets, "
          f"{text * len(distinct):.1f} s in all, once per model)\n")

    towers._text.clear()
    evaluation = images  # stands in for a synthetic set: its features are cached like one's
    first = _seconds(lambda: [detector(name).fit(bank).anomaly_scores(evaluation) for name in PROMPT_SETS])
    again = _seconds(lambda: [detector(name).fit(bank).anomaly_scores(evaluation) for name in PROMPT_SETS])
    print(f"| prompt search, {len(PROMPT_SETS)} trials on {args.images} cached images | seconds | trials per second |")
    print("|---|---|---|")
    print(f"| prompts encoded as the trials need them | {first:.2f} | {len(PROMPT_SETS) / first:.1f} |")
    print(f"| prompts already encoded | {again:.2f} | {len(PROMPT_SETS) / again:.1f} |")
    print(f"\nforward passes: {features.forward_counts}")


if __name__ == "__main__":
    main()
