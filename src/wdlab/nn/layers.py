"""Reparametrized layers: each one changes what a weight's scale means.

SigmaReparamLinear and WSConv2d make their weight scale-invariant by construction (the
layer divides it by its own scale); MuReadout rescales the readout for muP width transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SigmaReparamLinear", "WSConv2d", "MuReadout"]


class SigmaReparamLinear(nn.Linear):
    """sigma-Reparam (Zhai et al., "Stabilizing Transformer Training by Preventing Attention
    Entropy Collapse"): W_hat = (gamma / sigma(W)) * W.

    sigma(W) = u^T W v with persistent buffers u, v. Each TRAINING forward first does one
    power-iteration step (v <- W^T u / |.|, u <- W v / |.|, no gradient); eval forwards reuse
    the stored u, v. Gradients flow through W in both the numerator and sigma (u, v are
    constants), as in the reference implementation. `reset_sigma()` sets u, v to the top
    singular vectors of the current W (by SVD) and gamma to sigma(W), so W_hat == W; call it
    after re-initializing or overwriting `weight`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        kw = {"device": device, "dtype": dtype}
        self._ready = False  # nn.Linear.__init__ calls reset_parameters before buffers exist
        super().__init__(in_features, out_features, bias=bias, **kw)
        self.gamma = nn.Parameter(torch.ones((), **kw))
        self.register_buffer("u", torch.zeros(out_features, **kw))
        self.register_buffer("v", torch.zeros(in_features, **kw))
        self._ready = True
        self.reset_sigma()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SigmaReparamLinear:
        """A SigmaReparamLinear computing exactly what `linear` computes (until trained)."""
        w = linear.weight
        new = cls(
            linear.in_features, linear.out_features, linear.bias is not None, w.device, w.dtype
        )
        with torch.no_grad():
            new.weight.copy_(w)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.reset_sigma()
        return new

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self._ready:
            self.reset_sigma()

    @torch.no_grad()
    def reset_sigma(self) -> None:
        """u, v <- top singular vectors of W; gamma <- top singular value (W_hat == W)."""
        u, s, vh = torch.linalg.svd(self.weight.detach().double(), full_matrices=False)
        self.u.copy_(u[:, 0])
        self.v.copy_(vh[0])
        self.gamma.fill_(float(s[0]))

    def sigma(self) -> torch.Tensor:
        """The current estimate u^T W v (differentiable in W)."""
        return torch.dot(self.u, self.weight @ self.v)

    @torch.no_grad()
    def _power_step(self) -> None:
        w = self.weight.detach()
        self.v.copy_(F.normalize(w.t() @ self.u, dim=0))
        self.u.copy_(F.normalize(w @ self.v, dim=0))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * (self.gamma / self.sigma())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._power_step()
        return F.linear(x, self.effective_weight(), self.bias)


class WSConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization (Qiao et al.): each output filter is standardized to
    zero mean and unit variance over (in/groups, kh, kw) before the convolution, which makes
    the raw weight scale-invariant per filter. Pair it with BatchChannelNorm or GroupNorm.
    eps (added to the variance) is small so the invariance holds closely for usual weights.
    """

    def __init__(self, *args, eps: float = 1e-8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        dims = tuple(range(1, w.ndim))
        mean = w.mean(dim=dims, keepdim=True)
        var = w.var(dim=dims, unbiased=False, keepdim=True)
        return (w - mean) / (var + self.eps).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


class MuReadout(nn.Linear):
    """muP readout (Tensor Programs V, REFERENCE §4): y = W (output_mult * x / width_mult) + b.

    width_mult = width / base_width. With the default (fan_in) init the effective readout
    variance is then ∝ 1/fan_in^2, as muP asks; `zero_init=True` starts W (and b) at zero,
    the variant the muP authors recommend for transformers.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        width_mult: float = 1.0,
        output_mult: float = 1.0,
        zero_init: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value in (("width_mult", width_mult), ("output_mult", output_mult)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.zero_init = zero_init
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.width_mult = float(width_mult)
        self.output_mult = float(output_mult)

    def reset_parameters(self) -> None:
        if self.zero_init:
            nn.init.zeros_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        else:
            super().reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x * (self.output_mult / self.width_mult), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, width_mult={self.width_mult}, output_mult={self.output_mult}"
        )
