import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

MVTEC_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad"


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"MVTec AD bottle not found at {MVTEC_ROOT} (CI has it beside the project as ../shared)")
    return MVTEC_ROOT
