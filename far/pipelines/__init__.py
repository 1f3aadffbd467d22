"""Samplers (registry PIPELINES)."""
from .far_pipeline import FARPipeline
from .nbp_pipeline import NBPPipeline, top_k_top_p_filtering

__all__ = ['FARPipeline', 'NBPPipeline', 'top_k_top_p_filtering']
