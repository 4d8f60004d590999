"""What a selection and a search are asked to do, and the defaults: light to import, so that the command
lines answer `--help` and argument errors before torch, MLflow or Optuna load."""

from dataclasses import dataclass, field

from selection.candidates import (DEFAULT_CLIP_MODEL, LAYERS, OFFLINE_BACKBONES, Candidate, CandidatePool,
                                  default_candidates)
from selection.confidence import DEFAULT_CONFIDENCE

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
# the registry's aliases: the model that ships, and the newest pick that did not beat it
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class SelectionConfig:
    task: str = "elpv"
    data_root: str | None = None
    generators: tuple[str, ...] = ("cutpaste", "perlin", "nsa")
    diffusion_model: str | None = None  # DiffStyle's UNet: hub id or local directory (default: its own)
    diffusion_steps: int = 50
    sd_model: str | None = None  # CUT's Stable Diffusion: hub id or local directory (default: its own)
    anomalies: tuple[str, ...] = ("damaged",)  # CUT's anomaly words or phrases, used in turn
    object_name: str | None = None  # what CUT's and CLIP's prompts call the object (default: from the task name)
    generator_options: dict = field(default_factory=dict)  # generator -> {parameter: value}, applied last
    ensemble: str = "last"  # which candidates also join a score ensemble, ranked as one more candidate
    prior: str | None = None  # kept without strong evidence (default: the ensemble, else the largest pretrained)
    confidence: float = DEFAULT_CONFIDENCE  # (calibrated) probability the winner needs to overrule the prior
    detectors: tuple[str, ...] = ("knn", "patchcore")  # the detector kinds whose default candidates are ranked
    backbones: tuple[str, ...] = OFFLINE_BACKBONES
    layers: tuple[str, ...] = LAYERS
    clip_models: tuple[str, ...] = (DEFAULT_CLIP_MODEL,)
    k: int = 3
    controls: bool = True
    seed: int = 0
    n_seed: int = 20
    n_anomalies: int = 100
    heldout_fraction: float = 0.2
    max_support: int | None = None
    max_validation: int | None = None
    tracking_uri: str | None = None
    experiment: str = "anomaly-selection"
    model_name: str | None = None
    register: bool = True
    store: str = "mlruns/synthetic"
    feature_dir: str | None = "mlruns/features"  # pooled features kept on disk for later runs; None: memory only
    device: str = "cpu"

    @property
    def prompt_object(self) -> str:
        """What prompts call the task's object: --object-name, else from the task's name."""
        from selection.prompts import object_name

        return self.object_name or object_name(self.task)

    def candidate_pool(self) -> CandidatePool:
        return CandidatePool(self.backbones, self.layers, self.k, self.controls, self.clip_models, self.prompt_object)

    def candidates(self) -> list[Candidate]:
        return default_candidates(self.candidate_pool(), self.detectors)


PRUNERS = ("median", "hyperband", "none")


@dataclass
class SearchConfig:
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    space: str = "knn"
    n_trials: int = 50
    workers: int = 1
    storage: str | None = None  # an SQLAlchemy URL; default DEFAULT_STORAGE
    study_name: str | None = None  # default: task, space and the synthetic evidence's digest
    heartbeat_seconds: int = 10  # a trial without a heartbeat for 3x this long is marked failed
    pruner: str = "median"  # one of PRUNERS: stops trials of detectors trained in epochs (VLAD) that lag

    @property
    def storage_url(self) -> str:
        return self.storage or DEFAULT_STORAGE
