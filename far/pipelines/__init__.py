"""Samplers (registry PIPELINES): the protocol every sampler follows, and FAR's frame-by-frame sampler."""
from .base import VideoSampler, build_sampler
from .far_pipeline import FARPipeline, FARSampling

__all__ = ['FARPipeline', 'FARSampling', 'VideoSampler', 'build_sampler']
