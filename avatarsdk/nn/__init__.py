"""The paper's networks: UV StyleGAN2 generator G, its discriminators, identity regressor R.

Typical use::

    from avatarsdk.nn import checkpoint
    G = checkpoint.load("g.pt", sha256=..., kind="generator").model   # z/ws -> [B, 6, R, R]
    R = checkpoint.load("r.pt", sha256=..., kind="regressor").model   # embedding -> ws
    albedo, offsets_m = decode_maps(G.synthesis(R(embedding)), G.cfg)

ONNX export and the onnxruntime runner live in :mod:`avatarsdk.nn.onnx` (not
imported here: they need the optional ``onnx`` / ``onnxruntime`` packages).
"""

from avatarsdk.nn.regressor import Regressor, RegressorConfig
from avatarsdk.nn.stylegan import (
    Discriminator,
    DiscriminatorConfig,
    Discriminators,
    Generator,
    GeneratorConfig,
    MappingNetwork,
    SynthesisNetwork,
    d_logistic_loss,
    decode_maps,
    encode_maps,
    g_nonsaturating_loss,
    lazy_regularization_adam,
    mix_ws,
    r1_loss,
    r1_penalty,
    sample_z,
)

__all__ = [
    "Discriminator",
    "DiscriminatorConfig",
    "Discriminators",
    "Generator",
    "GeneratorConfig",
    "MappingNetwork",
    "Regressor",
    "RegressorConfig",
    "SynthesisNetwork",
    "d_logistic_loss",
    "decode_maps",
    "encode_maps",
    "g_nonsaturating_loss",
    "lazy_regularization_adam",
    "mix_ws",
    "r1_loss",
    "r1_penalty",
    "sample_z",
]
