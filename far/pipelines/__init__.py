"""Samplers (registry PIPELINES): the protocol every sampler follows, FAR's frame-by-frame sampler and NBP's
semi-autoregressive block sampler."""
from .base import VideoSampler, build_sampler
from .far_pipeline import FARPipeline, FARSampling
from .nbp_pipeline import NBPPipeline, NBPSampling, top_k_top_p_filtering

__all__ = ['FARPipeline', 'FARSampling', 'NBPPipeline', 'NBPSampling', 'VideoSampler', 'build_sampler',
           'top_k_top_p_filtering']
