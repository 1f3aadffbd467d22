"""Samplers (registry PIPELINES)."""
from .far_pipeline import FARPipeline

__all__ = ['FARPipeline']
