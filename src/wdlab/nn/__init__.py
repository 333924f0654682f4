"""Normalization layers, reparametrized layers and the GPT used by the workloads."""

from __future__ import annotations

from wdlab.nn.layers import MuReadout, SigmaReparamLinear, WSConv2d
from wdlab.nn.norms import (
    BatchChannelNorm,
    CRMSNorm,
    EvoNormB0,
    EvoNormS0,
    LayerNormScaling,
    PowerNorm,
    RMSNorm,
    crms_compress,
    crms_decompress,
    lecun_normal_,
    selu_mlp,
)
from wdlab.nn.transformer import GPT, MLP, Block, CausalSelfAttention, GPTConfig, convert_pre_ln

__all__ = [
    "RMSNorm",
    "CRMSNorm",
    "crms_compress",
    "crms_decompress",
    "PowerNorm",
    "BatchChannelNorm",
    "EvoNormB0",
    "EvoNormS0",
    "LayerNormScaling",
    "lecun_normal_",
    "selu_mlp",
    "SigmaReparamLinear",
    "WSConv2d",
    "MuReadout",
    "GPTConfig",
    "GPT",
    "CausalSelfAttention",
    "MLP",
    "Block",
    "convert_pre_ln",
]
