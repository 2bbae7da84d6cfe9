"""Offline training: samples and mixtures in the GS-Reasoner-Data format, point-cloud
augmentation, and the two-stage trainer behind `gs-reasoner train`."""
