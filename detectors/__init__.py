"""Candidate anomaly detectors: fit on normal images, score images (higher = more anomalous)."""

from detectors import _torchvision_fix

_torchvision_fix.apply()
