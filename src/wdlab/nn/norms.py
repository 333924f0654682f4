"""Normalization layers from the research wdlab draws on (REFERENCE.md §5).

Each layer here decides which weights become scale-invariant (REFERENCE §2): a weight whose
output feeds one of these norms loses its scale, so weight decay sets its effective learning
rate instead of regularizing it. That is why the lab needs all of them side by side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
]


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_unit_interval(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    if not ok:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (+ bias): LayerNorm without the centering.

    Own class rather than torch.nn.RMSNorm because wdlab needs an optional bias (so a Pre-LN
    model with biased LayerNorms converts exactly) and the same eps convention as LayerNorm.
    """

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("normalized_shape", normalized_shape)
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(normalized_shape)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


def crms_compress(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., d-1): center x, then drop the last coordinate (it is minus the sum)."""
    return (x - x.mean(-1, keepdim=True))[..., :-1]


def crms_decompress(z: torch.Tensor) -> torch.Tensor:
    """(..., d-1) -> (..., d): the zero-mean vector whose first d-1 coordinates are z."""
    return torch.cat([z, -z.sum(-1, keepdim=True)], dim=-1)


class CRMSNorm(nn.Module):
    """Compressed RMSNorm (Jiang et al., "Pre-RMSNorm and Pre-CRMSNorm Transformers").

    The input is a zero-mean d-vector stored in its first d-1 coordinates z; the d-th is
    -sum(z). Its mean square is (||z||^2 + (sum z)^2) / d, so
        CRMSNorm(z) = z / sqrt((||z||^2 + (sum z)^2)/d + eps)  (* weight + bias, on d-1 coords)
    equals the first d-1 coordinates of LayerNorm(decompress(z)) without affine — exactly,
    because the eps convention matches LayerNorm's (biased variance + eps).
    `d` is the full (uncompressed) width; inputs and outputs have d-1 features.
    """

    def __init__(
        self, d: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(d, int) or isinstance(d, bool) or d < 2:
            raise ValueError(f"d (the uncompressed width) must be an integer >= 2, got {d!r}")
        self.d = d
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d - 1)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(d - 1)) if bias else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.d - 1:
            raise ValueError(
                f"CRMSNorm(d={self.d}) expects inputs with d-1={self.d - 1} features, "
                f"got {z.shape[-1]}"
            )
        mean_square = (z.pow(2).sum(-1, keepdim=True) + z.sum(-1, keepdim=True).pow(2)) / self.d
        y = z * torch.rsqrt(mean_square + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"d={self.d}, eps={self.eps}, bias={self.bias is not None}"


class _PowerNormFunction(torch.autograd.Function):
    """x_hat = x / psi with the approximate backward of PowerNorm (Shen et al. 2020, Alg. 2).

    Backward, with g = dL/dx_hat, Lambda = mean(x_hat * g), Gamma = mean(x_hat^2) per channel:
        dL/dx = (g - nu_{t-1} * x_hat) / psi
        nu_t  = nu_{t-1} * (1 - (1 - alpha) * Gamma) + (1 - alpha) * Lambda
    nu is a running estimate of Lambda, replacing the exact batch term mean(x_hat * g).
    """

    @staticmethod
    def forward(ctx, x, psi, nu, alpha_bkw, reduce_dims):  # type: ignore[override]
        x_hat = x / psi
        ctx.save_for_backward(x_hat, psi)
        ctx.nu = nu  # a buffer updated in backward: kept out of saved_tensors' version checks
        ctx.alpha_bkw = alpha_bkw
        ctx.reduce_dims = reduce_dims
        return x_hat

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x_hat, psi = ctx.saved_tensors
        nu = ctx.nu
        dims, alpha = ctx.reduce_dims, ctx.alpha_bkw
        grad_x = (grad - nu.to(grad.dtype) * x_hat) / psi
        with torch.no_grad():
            lam = (x_hat * grad).mean(dim=dims)
            gam = x_hat.pow(2).mean(dim=dims)
            nu.mul_(1 - (1 - alpha) * gam).add_((1 - alpha) * lam)
        return grad_x, None, None, None, None


class PowerNorm(nn.Module):
    """Power Normalization (Shen et al., "PowerNorm: Rethinking Batch Normalization in
    Transformers", 2020): BatchNorm without centering, with a running quadratic mean.

    What is implemented (per channel; psi^2 is the quadratic mean E[x^2] over all other dims):
    - training, step t <= warmup_steps: normalize by the batch quadratic mean psi_B, and set
      the running psi^2 to the cumulative mean of the psi_B^2 seen so far (so it starts from
      data, not from 1; the authors' code also uses a batch-statistics warmup);
    - training, step t > warmup_steps: normalize by the running psi_{t-1} (Algorithm 2), then
      psi_t^2 = alpha_fwd * psi_{t-1}^2 + (1 - alpha_fwd) * psi_B^2;
    - both phases use the approximate backward (see _PowerNormFunction), never the exact
      gradient through the batch statistic;
    - eval: normalize by the running psi, no buffer changes, ordinary autograd.
    y = weight * x_hat + bias. `channel_dim` is 1 for (N, C, ...) inputs (conv, BatchNorm
    convention) and -1 for (B, T, C) transformer activations. eps is added to psi^2.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        warmup_steps: int = 100,
        affine: bool = True,
        channel_dim: int = 1,
    ) -> None:
        super().__init__()
        _check_positive_int("num_features", num_features)
        _check_unit_interval("alpha_fwd", alpha_fwd)
        _check_unit_interval("alpha_bkw", alpha_bkw)
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.num_features = num_features
        self.eps = eps
        self.alpha_fwd = alpha_fwd
        self.alpha_bkw = alpha_bkw
        self.warmup_steps = warmup_steps
        self.channel_dim = channel_dim
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_phi", torch.ones(num_features))  # running psi^2
        self.register_buffer("nu", torch.zeros(num_features))  # running backward statistic
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[self.channel_dim] != self.num_features:
            raise ValueError(
                f"PowerNorm({self.num_features}) expects {self.num_features} channels at "
                f"channel_dim={self.channel_dim}, got input shape {tuple(x.shape)}"
            )
        h = x.movedim(self.channel_dim, -1)  # channels last: parameters broadcast
        dims = tuple(range(h.ndim - 1))
        if self.training:
            with torch.no_grad():
                self.num_steps += 1
                step = int(self.num_steps)
                batch_phi = h.detach().pow(2).mean(dim=dims)
                if step <= self.warmup_steps:
                    phi = batch_phi
                    self.running_phi.mul_((step - 1) / step).add_(batch_phi / step)
                else:
                    phi = self.running_phi.clone()
                    self.running_phi.lerp_(batch_phi, 1 - self.alpha_fwd)
            psi = (phi + self.eps).sqrt()
            h = _PowerNormFunction.apply(h, psi, self.nu, self.alpha_bkw, dims)
        else:
            h = h / (self.running_phi + self.eps).sqrt()
        if self.weight is not None:
            h = h * self.weight + self.bias
        return h.movedim(-1, self.channel_dim)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, "
            f"alpha_bkw={self.alpha_bkw}, warmup_steps={self.warmup_steps}, "
            f"channel_dim={self.channel_dim}"
        )


class BatchChannelNorm(nn.Module):
    """Batch-Channel Normalization (Qiao et al., "Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization"): BatchNorm (affine) then a group-wise channel
    normalization with a per-channel affine. Meant to follow a WSConv2d.

    The batch step keeps BN's use of batch statistics in training (the paper's large-batch
    form); the micro-batch "estimated statistics" variant is not implemented.
    """

    def __init__(
        self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        _check_positive_int("num_channels", num_channels)
        _check_positive_int("num_groups", num_groups)
        if num_channels % num_groups:
            raise ValueError(
                f"num_groups ({num_groups}) must divide num_channels ({num_channels}); "
                "pick a divisor"
            )
        self.num_groups = num_groups
        self.eps = eps
        self.bn = nn.BatchNorm2d(num_channels, eps=eps, momentum=momentum)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(self.bn(x), self.num_groups, self.weight, self.bias, self.eps)


def _instance_std(x: torch.Tensor, eps: float) -> torch.Tensor:
    dims = tuple(range(2, x.ndim))
    return (x.var(dim=dims, unbiased=False, keepdim=True) + eps).sqrt()


def _group_std(x: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    std = (g.var(dim=-1, unbiased=False, keepdim=True) + eps).sqrt()
    return std.expand_as(g).reshape(x.shape)


def _channel_view(p: torch.Tensor, ndim: int) -> torch.Tensor:
    return p.view(1, -1, *([1] * (ndim - 2)))


class EvoNormB0(nn.Module):
    """EvoNorm-B0 (Liu et al., "Evolving Normalization-Activation Layers", 2020):
        y = x / max(sqrt(s2_batch(x) + eps), v * x + sqrt(s2_instance(x) + eps)) * weight + bias
    s2_batch is the per-channel variance over (N, spatial), replaced by a running average in
    eval (BatchNorm's momentum convention); s2_instance is per sample and channel.
    It is normalization and activation in one: do not add a ReLU after it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        _check_positive_int("num_features", num_features)
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:
            raise ValueError(f"EvoNormB0 expects (N, C, spatial...) inputs, got {tuple(x.shape)}")
        if self.training:
            dims = (0, *range(2, x.ndim))
            var = x.var(dim=dims, unbiased=False)
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            var = self.running_var
        left = (_channel_view(var, x.ndim) + self.eps).sqrt()
        right = _channel_view(self.v, x.ndim) * x + _instance_std(x, self.eps)
        y = x / torch.maximum(left, right)
        return y * _channel_view(self.weight, x.ndim) + _channel_view(self.bias, x.ndim)


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020), batch-independent:
        y = x * sigmoid(v * x) / sqrt(s2_group(x) + eps) * weight + bias
    with s2_group the variance over each sample's channel group and spatial positions.
    """

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__()
        _check_positive_int("num_features", num_features)
        _check_positive_int("groups", groups)
        if num_features % groups:
            raise ValueError(
                f"groups ({groups}) must divide num_features ({num_features}); pick a divisor"
            )
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:
            raise ValueError(f"EvoNormS0 expects (N, C, spatial...) inputs, got {tuple(x.shape)}")
        num = x * torch.sigmoid(_channel_view(self.v, x.ndim) * x)
        y = num / _group_std(x, self.groups, self.eps)
        return y * _channel_view(self.weight, x.ndim) + _channel_view(self.bias, x.ndim)


class LayerNormScaling(nn.Module):
    """LayerNorm Scaling ("The Curse of Depth"): the output of the l-th layer's norm times
    1/sqrt(l), l counted from 1, so Pre-LN output variance stops growing with depth.
    Wraps any norm module (LayerNorm, RMSNorm, CRMSNorm).
    """

    def __init__(self, norm: nn.Module, layer_index: int) -> None:
        super().__init__()
        _check_positive_int("layer_index", layer_index)
        self.norm = norm
        self.layer_index = layer_index
        self.scale = 1.0 / math.sqrt(layer_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale

    def extra_repr(self) -> str:
        return f"layer_index={self.layer_index}, scale={self.scale:.6g}"


def lecun_normal_(tensor: torch.Tensor) -> torch.Tensor:
    """Normal(0, 1/fan_in): the init under which SELU keeps activations at mean 0, var 1."""
    fan_in = tensor.shape[1] * (tensor[0][0].numel() if tensor.ndim > 2 else 1)
    with torch.no_grad():
        return tensor.normal_(0.0, 1.0 / math.sqrt(fan_in))


def selu_mlp(
    in_features: int,
    hidden_features: int,
    out_features: int,
    depth: int = 2,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A self-normalizing MLP (Klambauer et al., "Self-Normalizing Neural Networks"):
    `depth` hidden Linear + SELU layers with LeCun-normal weights and zero biases, and
    AlphaDropout (which keeps SELU's fixed point) instead of Dropout; a Linear readout.
    """
    _check_positive_int("depth", depth)
    _check_unit_interval("dropout", dropout)
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden_features), nn.SELU()]
        if dropout > 0:
            layers.append(nn.AlphaDropout(dropout))
        width = hidden_features
    layers.append(nn.Linear(width, out_features))
    for m in layers:
        if isinstance(m, nn.Linear):
            lecun_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)
