"""A fitted single detector on disk: its format and hyper-parameters in params.json, its bank (the fitted
array it scores against) in bank.npy. Nothing is unpickled on the way back."""

import json
from pathlib import Path

import numpy as np
from sklearn.exceptions import NotFittedError

PARAMS_FILE = "params.json"
BANK_FILE = "bank.npy"


def save_banked(detector, directory, format_name: str) -> None:
    """Write `detector.get_params()` under `format_name` and `detector.bank_` into `directory`."""
    if not hasattr(detector, "bank_"):
        raise NotFittedError(f"this {type(detector).__name__} is not fitted yet: only a fitted detector can be saved")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PARAMS_FILE).write_text(json.dumps({"format": format_name, **detector.get_params()}, indent=2))
    np.save(directory / BANK_FILE, detector.bank_)


def load_banked(cls, directory, format_name: str, features=None) -> tuple:
    """(`cls` built from the saved hyper-parameters and `features`, the saved bank), both unchecked beyond
    their format: the kind checks that the bank fits the detector."""
    directory = Path(directory)
    if not (directory / PARAMS_FILE).is_file() or not (directory / BANK_FILE).is_file():
        raise FileNotFoundError(f"no saved {cls.__name__} in {directory}: expected {PARAMS_FILE} and {BANK_FILE}")
    try:
        params = json.loads((directory / PARAMS_FILE).read_text())
        if params.pop("format") != format_name:
            raise ValueError(f"unsupported format (expected {format_name})")
        return cls(**params, features=features), np.load(directory / BANK_FILE, allow_pickle=False)
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as error:
        raise ValueError(f"corrupt saved {cls.__name__} in {directory}: {error}") from error
