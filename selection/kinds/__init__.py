"""Detector kinds as candidates: one module per kind, each registering its CandidateKind and search space."""
