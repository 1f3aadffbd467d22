"""Samplers (registry PIPELINES): the protocol every sampler follows, FAR's frame-by-frame sampler (and its streams),
the Video DiT's window sampler and NBP's semi-autoregressive block sampler."""
from .base import VideoSampler, build_sampler
from .far_pipeline import FARPipeline, FARSampling
from .nbp_pipeline import NBPPipeline, NBPSampling, top_k_top_p_filtering
from .streaming import FrameStream, StreamFrame, StreamStart
from .video_dit_pipeline import VideoDiTPipeline, VideoDiTSampling

__all__ = ['FARPipeline', 'FARSampling', 'FrameStream', 'NBPPipeline', 'NBPSampling', 'StreamFrame', 'StreamStart',
           'VideoDiTPipeline', 'VideoDiTSampling', 'VideoSampler', 'build_sampler', 'top_k_top_p_filtering']
