"""SWSA model selection: rank anomaly detectors on synthetic validation sets and promote the pick."""
