"""CLIP zero-shot detectors (detectors.ClipDetector) as candidates, one per prompt set: SWSA's use of synthetic
anomalies for choosing the text prompts. By default, on every CLIP model the user allows: each of SWSA's ten
templates, their ensemble (SWSA's baseline, and the kind's standard configuration: what a user takes
without evidence), WinCLIP's compositional ensemble, and the ensemble with the few-shot visual memory of the
normal images; as the negative control, the ensemble on the first model randomly initialised. Its search
space tunes the model, the prompt set, few-shot on or off and the weight of the visual score."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from selection.candidates import CandidateKind, CandidatePool, register_kind
from selection.prompts import ENSEMBLE, PROMPT_SETS, SWSA_TEMPLATES, WINCLIP, prompt_set
from selection.search_space import SpaceBounds, search_space

if TYPE_CHECKING:
    import optuna

    from detectors import ClipDetector, FeatureCache

FEW_SHOT_VISUAL_WEIGHT = 0.5  # WinCLIP+ averages its text and visual scores


@dataclass(frozen=True)
class ClipCandidate:
    model: str  # a clip: backbone, e.g. clip:ViT-B-16-plus-240@laion400m_e31
    prompts: str = ENSEMBLE  # one of selection.prompts.PROMPT_SETS
    object_name: str = "object"
    weights: str = "pretrained"
    few_shot: bool = False
    visual_weight: float = FEW_SHOT_VISUAL_WEIGHT

    @property
    def name(self) -> str:
        suffix = f"/few-shot-w{self.visual_weight:g}" if self.few_shot else ""
        return f"clip/{self.model.removeprefix('clip:')}/{self.weights}/{self.prompts}{suffix}"

    @property
    def is_control(self) -> bool:
        return self.weights != "pretrained"

    @property
    def is_standard(self) -> bool:
        return self.prompts == ENSEMBLE and not self.few_shot

    @property
    def params(self) -> dict:
        normal, anomalous = prompt_set(self.prompts, self.object_name)
        return {"detector": "clip", "backbone": self.model, "weights": self.weights, "prompts": self.prompts,
                "object_name": self.object_name, "few_shot": self.few_shot,
                "visual_weight": self.visual_weight,
                "normal_prompt": normal[0], "anomalous_prompt": anomalous[0], "prompts_per_state": len(normal)}

    @property
    def backbone_keys(self) -> tuple[tuple[str, str], ...]:
        return ((self.model, self.weights),)

    def check(self, features: "FeatureCache") -> None:
        """Validates the hyper-parameters and builds the model: a hub model that cannot be fetched fails here,
        before any image is read."""
        self.detector(features)
        features.backbone(self.model, self.weights)

    def detector(self, features: "FeatureCache") -> "ClipDetector":
        from detectors import ClipDetector

        normal, anomalous = prompt_set(self.prompts, self.object_name)
        return ClipDetector(backbone=self.model, weights=self.weights, normal_prompts=normal,
                            anomalous_prompts=anomalous, few_shot=self.few_shot, visual_weight=self.visual_weight,
                            features=features)


def default_candidates(pool: CandidatePool) -> list[ClipCandidate]:
    """Per CLIP model: SWSA's ten templates, their ensemble, WinCLIP's, and the ensemble few-shot; with
    controls, the ensemble on the first model randomly initialised."""
    candidates = []
    for model in pool.clip_models:
        candidates += [ClipCandidate(model, prompts, pool.object_name) for prompts in (*SWSA_TEMPLATES, ENSEMBLE, WINCLIP)]
        candidates.append(ClipCandidate(model, ENSEMBLE, pool.object_name, few_shot=True))
    if pool.controls and pool.clip_models:
        candidates.append(ClipCandidate(pool.clip_models[0], ENSEMBLE, pool.object_name, weights="random"))
    return candidates


register_kind(CandidateKind("clip", default_candidates))


@search_space("clip")
def clip_space(trial: "optuna.Trial", bounds: SpaceBounds) -> ClipCandidate:
    """CLIP on the allowed pretrained models: model, prompt set, few-shot on or off and the visual score's
    weight (only drawn few-shot)."""
    few_shot = trial.suggest_categorical("few_shot", (False, True))
    return ClipCandidate(
        model=trial.suggest_categorical("model", bounds.clip_models),
        prompts=trial.suggest_categorical("prompts", PROMPT_SETS),
        object_name=bounds.object_name,
        few_shot=few_shot,
        visual_weight=round(trial.suggest_float("visual_weight", 0.1, 0.9, step=0.1), 1) if few_shot
        else FEW_SHOT_VISUAL_WEIGHT,
    )
