"""Text prompts for CLIP detectors and the generators that describe the object: what a task's object is
called, and the prompt sets the CLIP candidates are made of.

SWSA (appendix B) selects among ten templates for industrial classes, each a pair [normal, anomalous] such as
"a photo of [a {}, a {} with defect]"; its baselines are the first template (the default prompt) and the
ensemble of all ten (each state's text feature the mean of its prompts'). WinCLIP's compositional ensemble
puts each state word ("flawless {}", "{} with flaw", ...) into each of its templates. Class names are
cleaned as SWSA does, and no more: trailing digits dropped, acronyms written out (pcb1 -> printed circuit
board); underscores become spaces.
"""

import re

# SWSA appendix B for MVTec AD and VisA, by a short name: (normal, anomalous)
SWSA_TEMPLATES = {
    "photo": ("a photo of a {}.", "a photo of a {} with defect."),
    "cropped": ("a cropped photo of a {}.", "a cropped photo of a {} with defect."),
    "dark": ("a dark photo of a {}.", "a dark photo of a {} with defect."),
    "inspection": ("a photo of a {} for inspection.", "a photo of a {} with defect for inspection."),
    "viewing": ("a photo of a {} for viewing.", "a photo of a {} with defect for viewing."),
    "bright": ("a bright photo of a {}.", "a bright photo of a {} with defect."),
    "close-up": ("a close-up photo of a {}.", "a close-up photo of a {} with defect."),
    "blurry": ("a blurry photo of a {}.", "a blurry photo of a {} with defect."),
    "small": ("a photo of a small {}.", "a photo of a small {} with defect."),
    "large": ("a photo of a large {}.", "a photo of a large {} with defect."),
}
DEFAULT_PROMPT = "photo"  # SWSA's "default prompt": the first template
ENSEMBLE, WINCLIP = "ensemble", "winclip"
PROMPT_SETS = (*SWSA_TEMPLATES, ENSEMBLE, WINCLIP)

WINCLIP_NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                         "{} without damage")
WINCLIP_ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)

ACRONYMS = {"pcb": "printed circuit board"}
TASK_OBJECTS = {"elpv": "solar cell"}  # tasks whose name does not say what the object is


def clean_class_name(name: str) -> str:
    """SWSA's mild cleaning: underscores to spaces, trailing digits dropped, acronyms written out."""
    words = re.sub(r"\d+$", "", name.replace("_", " ").strip()).split()
    return " ".join(ACRONYMS.get(word.lower(), word) for word in words)


def object_name(task_name: str) -> str:
    """What a prompt calls a task's object: the category, or the folder's name, cleaned."""
    if task_name in TASK_OBJECTS:
        return TASK_OBJECTS[task_name]
    return clean_class_name(task_name.rstrip("/").split("/")[-1].split(":")[-1]) or "object"


def prompt_set(name: str, object_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(normal prompts, anomalous prompts) of the prompt set `name` (see PROMPT_SETS) for `object_name`."""
    if name in SWSA_TEMPLATES:
        pairs = [SWSA_TEMPLATES[name]]
    elif name == ENSEMBLE:
        pairs = list(SWSA_TEMPLATES.values())
    elif name == WINCLIP:
        return tuple(_compose(WINCLIP_NORMAL_STATES, object_name)), tuple(_compose(WINCLIP_ANOMALOUS_STATES, object_name))
    else:
        raise ValueError(f"unknown prompt set {name!r}; choose from {', '.join(PROMPT_SETS)}")
    return (tuple(normal.format(object_name) for normal, _ in pairs),
            tuple(anomalous.format(object_name) for _, anomalous in pairs))


def _compose(states: tuple[str, ...], object_name: str) -> list[str]:
    return [template.format(state.format(object_name)) for state in states for template in WINCLIP_TEMPLATES]
