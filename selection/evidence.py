"""What candidates are judged on: the normal bank they fit, the synthetic validation sets they are ranked
by, and the task's real labelled validation set where it has one (reported, never used to pick)."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compat.progress import progress
from detectors import Detector, FeatureCache, Localiser, ScoreEnsemble
from detectors.images import conversion_notes, load_mask, read_rgb, resize_mask
from selection.candidates import Candidate, EnsembleCandidate, backbone_parameters
from selection.localisation import aupro, binarise_masks, pixel_auroc
from selection.scoring import auroc, require_two_classes
from selection.split import split_support
from selection.tasks import Task, load_task
from selection.validation_set import ValidationSet, build_validation_set
from selection.working_size import to_working_size, working_size


TRAINING_FAMILY = "family"  # the candidate parameter naming the generator a trained detector learned from
TRAINED_ON = "trained_on"  # its leaderboard column


@dataclass
class Evidence:
    task: Task
    bank: list[np.ndarray]
    validation_sets: list[ValidationSet]
    synthetic_images: dict[str, list[np.ndarray]]  # by generator
    real_images: list[np.ndarray] | None = None
    real_labels: np.ndarray | None = None
    # pixel ground truth (N, H, W) bool, where every anomaly of the set has a mask and all its images one size
    synthetic_masks: dict[str, np.ndarray | None] = field(default_factory=dict)  # by generator
    real_masks: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)  # what the selection changed about the task's images

    @property
    def has_real_labels(self) -> bool:
        return self.real_labels is not None


def evidence_digest(validation_sets: list[ValidationSet]) -> str:
    """One content digest for the synthetic evidence: the set's own, or a digest of several sets' digests."""
    if len(validation_sets) == 1:
        return validation_sets[0].digest
    joined = ",".join(sorted(vs.digest for vs in validation_sets))
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


def gather_evidence(config) -> Evidence:
    """Load the task (subsampled as `config` asks), split its support set, and build or reuse one synthetic
    validation set per generator. `config` is a SelectionConfig."""
    task = load_task(config.task, config.data_root).subsample(config.max_support, config.max_validation, config.seed)
    support, notes = _load_images(task.support, "support images")
    size = working_size(support)
    support, resized = to_working_size(support, size, "support images")
    support, notes = [_read_only(image) for image in support], notes + resized
    real = None
    if task.validation:  # read and checked before any set is generated: a bad one fails in seconds
        real_labels = np.array([item.label for item in task.validation])
        require_two_classes(real_labels, f"real validation set of {task.name}")
        originals, converted = _load_images([item.path for item in task.validation], "real validation images")
        real_images, resized = to_working_size(originals, size, "real validation images")
        real_images, notes = [_read_only(image) for image in real_images], notes + converted + resized
        real = real_images, real_labels, pixel_truth(real_images, real_labels,
                                                     [item.mask_path for item in task.validation],
                                                     [image.shape[:2] for image in originals])
    split = split_support(len(support), config.n_seed, config.heldout_fraction, config.seed)
    validation_sets = [
        build_validation_set(
            Path(config.store), generator,
            seed_images=[support[i] for i in split.seed],
            seed_paths=[task.support[i] for i in split.seed],
            heldout_paths=[task.support[i] for i in split.heldout],
            n_anomalies=config.n_anomalies, seed=config.seed, generator_params=_generator_params(config, generator),
            size=size,
        )
        for generator in progress(config.generators, desc="synthetic validation sets")
    ]
    for validation_set in validation_sets:
        require_two_classes(validation_set.labels, f"synthetic set {validation_set.generator}")
    evidence = Evidence(task, [support[i] for i in split.bank], validation_sets,
                        {vs.generator: [_read_only(image) for image in vs.load_images()] for vs in validation_sets},
                        notes=notes)
    evidence.synthetic_masks = {vs.generator: pixel_truth(evidence.synthetic_images[vs.generator], vs.labels,
                                                          vs.mask_paths) for vs in validation_sets}
    if task.validation:
        evidence.real_images, evidence.real_labels, evidence.real_masks = real
    return evidence


def pixel_truth(images: list[np.ndarray], labels, mask_paths,
                source_sizes: list[tuple[int, int]] | None = None) -> np.ndarray | None:
    """(N, H, W) bool anomalous pixels of a labelled set (none for its normals), or None where an anomaly
    has no mask or the images differ in size: pixel metrics are then not defined for the set. Where the images
    were brought to a working size, `source_sizes` are their sizes as read: each mask must have its image's,
    and is resized with it."""
    shapes = {image.shape[:2] for image in images}
    if len(shapes) != 1 or any(label == 1 and not path for label, path in zip(labels, mask_paths)):
        return None
    truth = np.zeros((len(images), *shapes.pop()), dtype=bool)
    for index, (label, path) in enumerate(zip(labels, mask_paths)):
        if label == 1:
            mask, expected = load_mask(path), source_sizes[index] if source_sizes else truth.shape[1:]
            if mask.shape != tuple(expected):
                raise ValueError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} px, its image "
                                 f"{expected[1]}x{expected[0]} px")
            truth[index] = binarise_masks(resize_mask(mask, truth.shape[1:]))
    return truth


def _generator_params(config, generator: str) -> dict:
    """What the configuration says about one generator; anything it leaves out keeps the generator's default."""
    store = Path(config.store)
    if generator == "diffstyle":
        params = {"steps": config.diffusion_steps, "device": config.device, "cache_dir": str(store / "inversions")}
        if config.diffusion_model:
            params["model"] = config.diffusion_model
    elif generator == "cut":
        params = {"anomalies": list(config.anomalies), "object_name": config.prompt_object,
                  "device": config.device}
        if config.sd_model:
            params["model"] = config.sd_model
    else:
        params = {}
    return {**params, **config.generator_options.get(generator, {})}


@dataclass
class ScoredCandidate:
    row: dict  # the leaderboard row: synthetic_auroc/<generator>, synthetic_auroc (their mean), real_auroc,
    # and for detectors with maps, on the sets with masks: the same for pixel_auroc and aupro
    detector: Detector  # fitted on the bank
    synthetic_scores: dict[str, np.ndarray]  # anomaly scores on each synthetic set, by generator
    real_scores: np.ndarray | None = None  # anomaly scores on the real validation set, where the task has one


def score_candidate(candidate: Candidate, evidence: Evidence, features: FeatureCache,
                    on_epoch=None) -> ScoredCandidate:
    """The candidate fitted on the bank and scored on every synthetic set and, with real labels, the real set.
    `on_epoch(epoch, detector)` reaches the fit of detectors trained in epochs (VLAD), after each epoch."""
    detector = candidate.detector(features)
    if on_epoch is not None and getattr(detector, "trained_in_epochs", False):
        detector.fit(evidence.bank, on_epoch=on_epoch)
    else:
        detector.fit(evidence.bank)
    scores, pixel_metrics = {}, {}
    for vs in evidence.validation_sets:
        scores[vs.generator], pixel_metrics[f"synthetic/{vs.generator}"] = _score_set(
            detector, evidence.synthetic_images[vs.generator], evidence.synthetic_masks.get(vs.generator),
            f"synthetic set {vs.generator}")
    real_scores = None
    if evidence.has_real_labels:
        real_scores, pixel_metrics["real"] = _score_set(detector, evidence.real_images, evidence.real_masks,
                                                        f"real validation set of {evidence.task.name}")
    scored = _scored(candidate, detector, scores, real_scores, evidence)
    scored.row.update(_pixel_columns(pixel_metrics))
    return scored


def synthetic_auroc(detector: Detector, evidence: Evidence) -> float:
    """The detector's mean image AUROC over the synthetic sets."""
    scores = {vs.generator: detector.anomaly_scores(evidence.synthetic_images[vs.generator])
              for vs in evidence.validation_sets}
    return _synthetic_aurocs(scores, evidence)["synthetic_auroc"]


def _synthetic_aurocs(scores: dict[str, np.ndarray], evidence: Evidence) -> dict[str, float]:
    """synthetic_auroc/<generator> on each synthetic set, and synthetic_auroc, their mean."""
    aurocs = {f"synthetic_auroc/{vs.generator}": auroc(vs.labels, scores[vs.generator], f"synthetic set {vs.generator}")
              for vs in evidence.validation_sets}
    return {**aurocs, "synthetic_auroc": float(np.mean(list(aurocs.values())))}


def _score_set(detector: Detector, images, masks: np.ndarray | None, set_name: str) -> tuple[np.ndarray, dict]:
    """The detector's image scores on a set and, where it has maps and the set masks, P-AUROC and AUPRO."""
    if masks is None or not isinstance(detector, Localiser):
        return detector.anomaly_scores(images), {}
    scores, maps = detector.scores_and_maps(images)
    return scores, {"pixel_auroc": pixel_auroc(masks, maps, set_name), "aupro": aupro(masks, maps, set_name=set_name)}


def _pixel_columns(pixel_metrics: dict[str, dict]) -> dict[str, float]:
    """Leaderboard columns synthetic_<metric>/<generator>, synthetic_<metric> (the mean over the sets that
    have it) and real_<metric>, for each pixel metric measured."""
    columns = {}
    for metric in ("pixel_auroc", "aupro"):
        synthetic = {name.split("/", 1)[1]: values[metric] for name, values in pixel_metrics.items()
                     if name.startswith("synthetic/") and metric in values}
        columns.update({f"synthetic_{metric}/{generator}": value for generator, value in synthetic.items()})
        if synthetic:
            columns[f"synthetic_{metric}"] = float(np.mean(list(synthetic.values())))
        if metric in pixel_metrics.get("real", {}):
            columns[f"real_{metric}"] = pixel_metrics["real"][metric]
    return columns


def score_ensemble(ensemble: EnsembleCandidate, scored: dict[str, ScoredCandidate], evidence: Evidence,
                   features: FeatureCache) -> ScoredCandidate:
    """The ensemble of already scored members, standardised on the held-out normals of the first synthetic
    set (every set shares them), scored from its members' scores without scoring any image again.

    Each member weighs as much as its backbones have parameters: the soft form of the prior "take the largest
    model". With equal weights the ensemble lost to the largest model alone on the benchmark's tasks where
    that model is already close to the best (docs/selection-quality); weighted by size it did not."""
    members = [scored[member.name] for member in ensemble.members]
    first = evidence.validation_sets[0]
    normals = np.asarray(first.labels) == 0
    detector = ScoreEnsemble.from_heldout_scores(
        [m.detector for m in members], [m.synthetic_scores[first.generator][normals] for m in members],
        weights=[backbone_parameters(member, features) for member in ensemble.members])
    scores = {vs.generator: detector.combine([m.synthetic_scores[vs.generator] for m in members])
              for vs in evidence.validation_sets}
    real_scores = detector.combine([m.real_scores for m in members]) if evidence.has_real_labels else None
    return _scored(ensemble, detector, scores, real_scores, evidence)


def _scored(candidate, detector, scores: dict[str, np.ndarray], real_scores: np.ndarray | None,
            evidence: Evidence) -> ScoredCandidate:
    row = {"candidate": candidate.name, "control": candidate.is_control,
           "ensemble": isinstance(candidate, EnsembleCandidate)}
    if TRAINING_FAMILY in candidate.params:  # a detector trained on generated anomalies (VLAD)
        row[TRAINED_ON] = candidate.params[TRAINING_FAMILY]
    row.update(_synthetic_aurocs(scores, evidence))
    if real_scores is not None:
        row["real_auroc"] = auroc(evidence.real_labels, real_scores, f"real validation set of {evidence.task.name}")
    return ScoredCandidate(row, detector, scores, real_scores)


def check_candidates(candidates: list[Candidate], features: FeatureCache) -> None:
    """Fail on an unknown backbone or layer before any image is loaded or generated."""
    if not candidates:
        raise ValueError("no candidates: give at least one backbone and layer")
    for candidate in candidates:
        candidate.check(features)


def _load_images(paths, description: str) -> tuple[list[np.ndarray], list[str]]:
    """The images, read-only, and a note where some had to be converted to 8-bit RGB."""
    read = [read_rgb(path) for path in progress(paths, desc=description)]
    return [_read_only(image) for image, _ in read], conversion_notes([mode for _, mode in read], description)


def _read_only(image: np.ndarray) -> np.ndarray:
    """Evidence never changes; read-only, its features are looked up without hashing the pixels again."""
    image.setflags(write=False)
    return image
