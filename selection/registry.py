"""The picked detector as an MLflow pyfunc model, registered and promoted by alias on its evidence.

`champion` moves to a new version only by the rule that picks it within a selection: the current champion is
the prior, kept unless the new version beats it in at least the confidence threshold's share of stratified
bootstrap resamples of the same synthetic validation sets (same digest), in every generator family. Each
version's per-image synthetic scores are kept beside it (in its run, at the path its `synthetic_scores` tag
names) so a later version can be compared with it; a version on other sets, or against a champion without
kept scores, is the `challenger`. Version tags carry the evidence and the reason.

A version is created with its evidence tags in one request, after everything it refers to is logged, and
only then aliased: a process killed on the way leaves no version without evidence and no alias on one. Just
before the alias is set the champion is read again, and where another promotion moved it meanwhile the
decision is taken again against the new champion; MLflow has no compare-and-set, so two promotions can still
interleave between that read and the alias write (milliseconds), not over a whole registration.
"""

import logging
import re
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec

import compat
import detectors
from detectors import Detector
from detectors.bundle import save_bundle
from selection import tracking
from selection.confidence import DEFAULT_CONFIDENCE, every_family_beats
from selection.config import CHALLENGER, CHAMPION
from selection.detector_model import MAPS_PARAM
from selection.evidence import evidence_digest
from selection.validation_set import ValidationSet

# inputs are files, paths or arrays (see detector_model.py): no input schema; `maps` asks for anomaly maps
MODEL_SIGNATURE = ModelSignature(inputs=None, params=ParamSchema([ParamSpec(MAPS_PARAM, "boolean", False)]))
SCORES_DIR = SCORES_TAG = "synthetic_scores"
RECHECKS = 5  # MLflow has no compare-and-set on an alias: how often a promotion re-decides when raced


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: str
    alias: str
    reason: str

    def __str__(self) -> str:
        return f"registered {self.model_name} v{self.version} as @{self.alias}: {self.reason}"


@dataclass(frozen=True)
class Pick:
    """What a selection or a search chose, with its evidence; `detector` is fitted on the normal bank."""
    candidate: str
    detector: Detector
    synthetic_auroc: float
    synthetic_scores: dict[str, np.ndarray]  # its anomaly scores on each synthetic set, by generator
    real_auroc: float | None = None
    evidence: dict = field(default_factory=dict)  # tagged on the model version beside the common evidence


def default_model_name(task: str) -> str:
    return "anomaly-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-")


def record_and_promote(task: str, validation_sets: list[ValidationSet], summary: tracking.Summary,
                       pick: Pick | None, model_name: str | None, threshold: float = DEFAULT_CONFIDENCE,
                       seed: int = 0) -> Promotion | None:
    """The end of a selection or a search, inside its parent run: the summary logged and, where there is a
    pick, it registered as `model_name` (default anomaly-<task>) and promoted on its evidence (`threshold`:
    the confidence it needs to displace the champion)."""
    tracking.log_summary(summary)
    if pick is None:
        return None
    evidence = {"candidate": pick.candidate, "task": task, "synthetic_auroc": pick.synthetic_auroc,
                "dataset_digest": evidence_digest(validation_sets)}
    if pick.real_auroc is not None:
        evidence["real_auroc"] = pick.real_auroc
    return register_and_promote(model_name or default_model_name(task), pick.detector, {**evidence, **pick.evidence},
                                {vs.generator: vs.labels for vs in validation_sets}, pick.synthetic_scores,
                                threshold, seed)


def register_and_promote(model_name: str, detector: Detector, evidence: dict[str, str | float],
                         labels: dict[str, np.ndarray], scores: dict[str, np.ndarray],
                         threshold: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Promotion:
    """Log `detector` with its backbones' weights under the active run, register it and set its alias.
    `evidence` must hold `synthetic_auroc` and `dataset_digest`; anything else (real AUROC, tau, candidate)
    is tagged as is. `labels` and `scores` (by generator) are the synthetic sets' labels and the detector's
    scores on them, which decide against the champion and are kept for later versions."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_signature_inference():
        save_bundle(detector, Path(tmp) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="detector",
            python_model=str(Path(__file__).with_name("detector_model.py")),
            artifacts={"bundle": str(Path(tmp) / "bundle")},
            code_paths=[str(Path(package.__file__).parent) for package in (detectors, compat)],
            pip_requirements=_requirements(),
            signature=MODEL_SIGNATURE,
        )
    scores_path = f"{SCORES_DIR}/{info.model_id}.json"
    mlflow.log_dict({generator: [float(x) for x in values] for generator, values in scores.items()}, scores_path)
    champion = _champion(model_name)
    alias, reason = _choose_alias(champion, evidence, labels, scores, threshold, seed)
    tags = {key: str(value) for key, value in {**evidence, "promotion": reason, SCORES_TAG: scores_path}.items()}
    version = str(mlflow.register_model(info.model_uri, model_name, tags=tags).version)
    client = MlflowClient()
    for _ in range(RECHECKS):  # another process may have moved the champion meanwhile: decide against the new one
        now = _champion(model_name)
        if _version(now) == _version(champion):
            break
        champion = now
        alias, reason = _choose_alias(champion, evidence, labels, scores, threshold, seed)
        client.set_model_version_tag(model_name, version, "promotion", reason)
    client.set_registered_model_alias(model_name, alias, version)
    return Promotion(model_name, version, alias, reason)


def _champion(model_name: str) -> ModelVersion | None:
    try:
        return MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def _version(model_version: ModelVersion | None) -> str | None:
    return None if model_version is None else str(model_version.version)


@contextmanager
def _quiet_signature_inference():
    """The model takes paths, frames or image arrays, which no single MLflow input schema or input example
    describes, so its signature has none and no example is logged; MLflow's warnings about that are expected."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            yield
    finally:
        logger.setLevel(level)


def _choose_alias(champion: ModelVersion | None, evidence: dict, labels: dict[str, np.ndarray],
                  scores: dict[str, np.ndarray], threshold: float, seed: int) -> tuple[str, str]:
    if champion is None:
        return CHAMPION, "first registered model"
    if champion.tags.get("dataset_digest") != evidence["dataset_digest"]:
        return CHALLENGER, (f"champion v{champion.version} was selected on another synthetic set "
                            f"({champion.tags.get('dataset_digest')}): not comparable")
    try:
        # versions registered before the tag existed kept their scores by version number
        scores_path = champion.tags.get(SCORES_TAG) or f"{SCORES_DIR}/v{champion.version}.json"
        kept = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/{scores_path}")
        champion_scores = {generator: np.asarray(kept[generator], dtype=float) for generator in labels}
    except (MlflowException, OSError, KeyError, TypeError, ValueError):
        return CHALLENGER, f"champion v{champion.version} has no kept synthetic scores to be compared with"
    confidence = every_family_beats(labels, scores, champion_scores, seed)
    better = confidence >= threshold
    return (CHAMPION if better else CHALLENGER,
            f"{'beats' if better else 'does not beat'} champion v{champion.version} with confidence: better in "
            f"{confidence:.0%} of bootstrap resamples of the same synthetic sets, every generator family "
            f"(threshold {threshold:.0%})")


def _requirements() -> list[str]:
    from importlib.metadata import version

    # the backbones' code; their weights travel in the model's bundle, so no weights package is listed
    packages = ["mlflow", "torch", "torchvision", "timm", "efficientnet-lite-pytorch", "safetensors",
                "scikit-learn", "scipy", "numpy", "pandas", "pillow", "tqdm"]
    return [f"{name}=={version(name)}" for name in packages]
