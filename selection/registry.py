"""The picked detector as an MLflow pyfunc model, registered and promoted by alias on its evidence.

`champion` moves to a new version only if it beats the current champion on the same synthetic validation
evidence (same digest); otherwise the new version is the `challenger`. Version tags carry the evidence.
"""

import logging
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import compat
import detectors
from detectors import DeepKNN, ScoreEnsemble
from detectors.bundle import save_bundle
from selection import tracking
from selection.config import CHALLENGER, CHAMPION
from selection.evidence import evidence_digest
from selection.validation_set import ValidationSet


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
    detector: DeepKNN | ScoreEnsemble
    synthetic_auroc: float
    real_auroc: float | None = None
    evidence: dict = field(default_factory=dict)  # tagged on the model version beside the common evidence


def default_model_name(task: str) -> str:
    return "anomaly-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-")


def record_and_promote(task: str, validation_sets: list[ValidationSet], summary: tracking.Summary,
                       pick: Pick | None, model_name: str | None) -> Promotion | None:
    """The end of a selection or a search, inside its parent run: the summary logged and, where there is a
    pick, it registered as `model_name` (default anomaly-<task>) and promoted on its evidence."""
    tracking.log_summary(summary)
    if pick is None:
        return None
    evidence = {"candidate": pick.candidate, "task": task, "synthetic_auroc": pick.synthetic_auroc,
                "dataset_digest": evidence_digest(validation_sets)}
    if pick.real_auroc is not None:
        evidence["real_auroc"] = pick.real_auroc
    return register_and_promote(model_name or default_model_name(task), pick.detector, {**evidence, **pick.evidence})


def register_and_promote(model_name: str, detector: DeepKNN | ScoreEnsemble,
                         evidence: dict[str, str | float]) -> Promotion:
    """Log `detector` with its backbones' weights under the active run, register it and set its alias.
    `evidence` must hold `synthetic_auroc` and `dataset_digest`; anything else (real AUROC, tau, candidate)
    is tagged as is."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_signature_inference():
        save_bundle(detector, Path(tmp) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="detector",
            python_model=str(Path(__file__).with_name("detector_model.py")),
            artifacts={"bundle": str(Path(tmp) / "bundle")},
            code_paths=[str(Path(package.__file__).parent) for package in (detectors, compat)],
            registered_model_name=model_name,
            pip_requirements=_requirements(),
        )
    version = str(info.registered_model_version)
    alias, reason = _choose_alias(model_name, evidence)
    client = MlflowClient()
    for key, value in {**evidence, "promotion": reason}.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_registered_model_alias(model_name, alias, version)
    return Promotion(model_name, version, alias, reason)


@contextmanager
def _quiet_signature_inference():
    """The model takes paths, frames or image arrays, which no single MLflow signature describes, so it is
    logged without one; MLflow's warning that it could not infer one is expected."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _choose_alias(model_name: str, evidence: dict) -> tuple[str, str]:
    try:
        champion = MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return CHAMPION, "first registered model"
    if champion.tags.get("dataset_digest") != evidence["dataset_digest"]:
        return CHALLENGER, (f"champion v{champion.version} was selected on another synthetic set "
                            f"({champion.tags.get('dataset_digest')}): not comparable")
    current = float(champion.tags["synthetic_auroc"])
    if float(evidence["synthetic_auroc"]) > current:
        return CHAMPION, f"beats champion v{champion.version} ({current:.4f}) on the same synthetic set"
    return CHALLENGER, f"does not beat champion v{champion.version} ({current:.4f}) on the same synthetic set"


def _requirements() -> list[str]:
    from importlib.metadata import version

    # the backbones' code; their weights travel in the model's bundle, so no weights package is listed
    packages = ["mlflow", "torch", "torchvision", "timm", "efficientnet-lite-pytorch", "safetensors",
                "scikit-learn", "numpy", "pandas", "pillow", "tqdm"]
    return [f"{name}=={version(name)}" for name in packages]
