"""Conversions of reference checkpoints and configs into this framework's models (FAR's released checkpoints load
as they are; NBP's are Lightning modules with the reference's own config names)."""
