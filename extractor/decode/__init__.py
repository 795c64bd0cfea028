"""Decoding: CPU decoder processes (FFmpeg through PyAV, or decord) writing YUV or RGB
frames into shared pinned memory, NVDEC sessions on the GPU, and the worker-side source
that feeds both from the worker's claims. Modules that decoder processes import
(common, readers, cpu_process, color's frame inspection) never import torch."""
