"""Helpers of the training and test runs: checkpoints, logging, video files, distributed work."""
