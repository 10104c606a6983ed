"""Anomaly detection: EAR + FADeR models, training, evaluation, inference, and the detector service."""
