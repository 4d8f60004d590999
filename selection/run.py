"""`python -m selection.run`: select an anomaly detector for a task without labelled anomalies."""

import argparse
import json
import sys

from generation import list_generators
from generation.models import CUT_MODEL, DIFFSTYLE_MODEL
from selection.candidates import ENSEMBLES, LAYERS, OFFLINE_BACKBONES, list_kinds
from selection.config import DEFAULT_TRACKING_URI, SelectionConfig
from selection.confidence import DEFAULT_CONFIDENCE
from selection.tasks import available_task_kinds, not_utf8

DEFAULT_TASK = "elpv"  # installs from PyPI, so the default run works offline
DEFAULT_TASK_LIMITS = {"max_support": 240, "max_validation": 200}  # keeps the default run to a few minutes


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def names_option(known: list[str], what: str):
    """An argparse type: comma-separated names, each one of `known`."""
    def parse(text: str) -> tuple[str, ...]:
        names = _csv(text)
        if unknown := [name for name in names if name not in known]:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
        return names
    return parse


def integer_option(minimum: int):
    """An argparse type: an integer of at least `minimum` (argparse names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def text_option(text: str) -> str:
    """An argparse type for paths and names MLflow records: text that is valid UTF-8 (a path read from a
    disk may hold bytes that are not, which no MLflow store can hold)."""
    if problem := not_utf8(text):
        raise argparse.ArgumentTypeError(problem)
    return text


def fraction_option(low_open: bool, high_open: bool):
    """An argparse type: a number in [0, 1], each end excluded where open."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (0 < value if low_open else 0 <= value) or not (value < 1 if high_open else value <= 1):
            raise argparse.ArgumentTypeError(f"must lie in {'(' if low_open else '['}0, 1{')' if high_open else ']'}, "
                                             f"got {value}")
        return value
    return parse


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The options a selection and a search share: the task, its synthetic evidence, the backbones and MLflow."""
    parser.add_argument("--task", default=None, type=text_option,
                        help=f"task to select for: {', '.join(available_task_kinds())} "
                             f"(default: {DEFAULT_TASK}, subsampled to {DEFAULT_TASK_LIMITS})")
    parser.add_argument("--data-root", type=text_option, help="dataset root (else $ANOMALY_DATA_ROOT, else ./data)")
    parser.add_argument("--generators", type=names_option(list_generators(), "generator"),
                        default=SelectionConfig.generators,
                        help=f"comma-separated, from: {', '.join(list_generators())} "
                             f"(default {','.join(SelectionConfig.generators)})")
    parser.add_argument("--diffusion-model", help="DiffStyle's unconditional diffusers UNet2DModel: a hub id or a "
                                                  f"local directory (default {DIFFSTYLE_MODEL})")
    parser.add_argument("--diffusion-steps", type=integer_option(1), default=50, help="DiffStyle's DDIM steps (default 50)")
    parser.add_argument("--sd-model", help="CUT's Stable Diffusion 1.x: a hub id or a local directory with the diffusers "
                                           f"layout (default {CUT_MODEL})")
    parser.add_argument("--anomaly", dest="anomalies", type=_csv, default=("damaged",),
                        help="CUT's anomaly words or phrases, comma-separated, used in turn (default damaged)")
    parser.add_argument("--object-name", help="what CUT's and CLIP's prompts call the object (default: from the "
                                              "task's name, cleaned: pcb1 -> printed circuit board)")
    parser.add_argument("--confidence", type=fraction_option(False, False), default=DEFAULT_CONFIDENCE,
                        help="probability the synthetic winner needs to overrule the prior, and a new model version "
                             "to displace the registered champion: calibrated on the quality benchmark where it was "
                             "measured for these generators, else the bootstrap's "
                             f"(default {DEFAULT_CONFIDENCE}; 0 always takes the synthetic winner)")
    parser.add_argument("--generator-option", dest="generator_options", action="append", default=[],
                        metavar="GENERATOR.PARAM=VALUE",
                        help="any generator hyper-parameter, e.g. cut.steps=50 or cutpaste.variant=scar "
                             "(VALUE is JSON where it parses, else a string); repeatable")
    parser.add_argument("--backbones", "--candidates", type=_csv, default=OFFLINE_BACKBONES,
                        help="comma-separated backbones; timm models as timm:<name> or timm:<name>@<weights file> "
                             f"(default: {','.join(OFFLINE_BACKBONES)})")
    parser.add_argument("--layers", type=_csv, default=LAYERS, help="comma-separated: last, mid (default both)")
    parser.add_argument("--clip-models", type=_csv, default=SelectionConfig.clip_models,
                        help="comma-separated CLIP models for the clip detectors: clip:<open_clip architecture>@<tag "
                             "or local checkpoint file>, clip:hf-hub:<org>/<repo> or clip:local-dir:<folder> "
                             f"(default {','.join(SelectionConfig.clip_models)}, fetched from the hub on first use)")
    parser.add_argument("--seed", type=integer_option(0), default=0)
    parser.add_argument("--n-seed", type=integer_option(1), default=20, help="seed images for the generators (default 20)")
    parser.add_argument("--n-anomalies", type=integer_option(1), default=100, help="synthetic anomalies per generator (default 100)")
    parser.add_argument("--heldout-fraction", type=fraction_option(True, True), default=0.2,
                        help="fraction of the support set held out as validation normals (default 0.2)")
    parser.add_argument("--max-support", type=integer_option(1), help="subsample the support set to at most this many images")
    parser.add_argument("--max-validation", type=integer_option(2), help="subsample the real validation set (stratified)")
    parser.add_argument("--tracking-uri", type=text_option,
                        help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})")
    parser.add_argument("--experiment", default="anomaly-selection", type=text_option, help="MLflow experiment name")
    parser.add_argument("--model-name", type=text_option, help="registered model name (default anomaly-<task>)")
    parser.add_argument("--no-register", dest="register", action="store_false", help="do not register the pick")
    parser.add_argument("--store", default="mlruns/synthetic", type=text_option,
                        help="where synthetic validation sets are stored")
    parser.add_argument("--feature-dir", default="mlruns/features", type=text_option,
                        help="where pooled backbone features are kept for later runs and other workers")
    parser.add_argument("--device", default="cpu", help="torch device for backbones, e.g. cuda (default cpu)")


def _generator_options(options: list[str]) -> dict[str, dict]:
    parsed: dict[str, dict] = {}
    for option in options:
        target, separator, value = option.partition("=")
        generator, dot, parameter = target.partition(".")
        if not separator or not dot or not generator or not parameter:
            raise SystemExit(f"error: --generator-option wants GENERATOR.PARAM=VALUE, got {option!r}")
        try:
            parsed.setdefault(generator, {})[parameter] = json.loads(value)
        except json.JSONDecodeError:
            parsed.setdefault(generator, {})[parameter] = value
    return parsed


def selection_config(args: dict) -> SelectionConfig:
    """The SelectionConfig for parsed options (their `vars`); without --task, the embedded default task."""
    fields = {name: args[name] for name in SelectionConfig.__dataclass_fields__ if name in args}
    fields["generator_options"] = _generator_options(fields.get("generator_options", []))
    if fields["task"] is None:
        fields["task"] = DEFAULT_TASK
        for key, value in DEFAULT_TASK_LIMITS.items():
            fields[key] = fields[key] or value
    return SelectionConfig(**fields)


def parse_args(argv=None) -> SelectionConfig:
    parser = argparse.ArgumentParser(
        prog="python -m selection.run",
        description="Rank candidate anomaly detectors on a synthetic validation set (SWSA), compare with real "
                    "labels where the task has them, and register the pick in the MLflow model registry.",
    )
    add_selection_arguments(parser)
    parser.add_argument("--detectors", type=_csv, default=SelectionConfig.detectors,
                        help=f"comma-separated detector kinds whose default candidates are ranked, from: "
                             f"{', '.join(list_kinds())} (default {','.join(SelectionConfig.detectors)})")
    parser.add_argument("--k", type=integer_option(1), default=3, help="neighbours in deep kNN (default 3)")
    parser.add_argument("--no-controls", dest="controls", action="store_false",
                        help="skip the negative controls (random-weight backbones, raw-pixel kNN)")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default=SelectionConfig.ensemble,
                        help="also rank the score ensemble of these candidates: every pretrained one, those at the "
                             f"last or the mid layer, or none (default {SelectionConfig.ensemble})")
    parser.add_argument("--prior", help="the candidate to keep unless the synthetic evidence is confident it is "
                                        "beaten (default: the ensemble, else the largest pretrained backbone at "
                                        "its last layer)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.detectors) - set(list_kinds())):
        parser.error(f"unknown detector kind {', '.join(unknown)}; known: {', '.join(list_kinds())}")
    return selection_config(vars(args))


def main(argv=None) -> int:
    config = parse_args(argv)
    from selection.pipeline import format_report, run_selection  # torch and MLflow: once the arguments are good

    try:
        result = run_selection(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's, not the input's: a full disk, a lost mount
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(result))
    if result.promotion:
        print(result.promotion)
    print(f"MLflow run {result.run_id}; browse with: mlflow ui --backend-store-uri "
          f"{config.tracking_uri or DEFAULT_TRACKING_URI}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
