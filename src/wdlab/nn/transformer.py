"""A small GPT whose normalization is a knob: which norm, where it sits, and the stability
fixes of REFERENCE.md §5 (qk-norm, z-loss, LayerNorm Scaling, sigma-Reparam, muP attention).

Reads top to bottom like nanoGPT: config, attention, MLP, block, model, then the helper that
converts a Pre-LN model into the equivalent Pre-RMSNorm / Pre-CRMSNorm model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wdlab.errors import ConfigError
from wdlab.nn.layers import SigmaReparamLinear
from wdlab.nn.norms import CRMSNorm, LayerNormScaling, RMSNorm

__all__ = ["GPTConfig", "GPT", "CausalSelfAttention", "MLP", "Block", "convert_pre_ln"]

NORMS = ("layernorm", "rmsnorm", "crmsnorm", "none")
PLACEMENTS = ("pre", "post", "peri", "mix")
ATTN_SCALES = ("sqrt", "mup")


def _fail(field: str, allowed: str, value: object) -> None:
    raise ConfigError(f"GPTConfig.{field} must be {allowed}; got {value!r}", field=field)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class GPTConfig:
    """Shape and normalization choices of a GPT. Invalid values raise ConfigError (a
    ValueError) naming the field and its allowed values."""

    vocab_size: int
    context: int = 64
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_mlp: int | None = None  # None -> 4 * d_model
    norm: str = "layernorm"  # layernorm | rmsnorm | crmsnorm | none
    placement: str = "pre"  # pre | post | peri | mix
    mix_ratio: float = 0.25  # mix: post-norm in the first round(mix_ratio * n_layer) layers
    qk_norm: bool = False
    ln_scaling: bool = False
    sigma_reparam: bool = False
    z_loss: float = 0.0
    tie_embeddings: bool = True
    bias: bool = False
    dropout: float = 0.0
    attn_scale: str = "sqrt"  # sqrt -> 1/sqrt(d_head); mup -> 1/d_head
    qk_clip: float = 0.0  # > 0: record each head's max logit, wdlab.nn.qk_clip rescales W_q, W_k
    muon_per_head: bool = False  # mark W_q, W_k, W_v, W_o for per-head Muon orthogonalization

    def __post_init__(self) -> None:
        for field in ("vocab_size", "context", "n_layer", "n_head", "d_model"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                _fail(field, "a positive integer", value)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        elif not _is_int(self.d_mlp) or self.d_mlp < 1:
            _fail("d_mlp", "a positive integer or None (4 * d_model)", self.d_mlp)
        if self.d_model % self.n_head:
            _fail("d_model", f"divisible by n_head={self.n_head}", self.d_model)
        if self.norm not in NORMS:
            _fail("norm", f"one of {', '.join(NORMS)}", self.norm)
        if self.norm == "crmsnorm" and self.d_model < 2:
            _fail("d_model", "at least 2 with norm='crmsnorm'", self.d_model)
        if self.placement not in PLACEMENTS:
            _fail("placement", f"one of {', '.join(PLACEMENTS)}", self.placement)
        if not _is_number(self.mix_ratio) or not 0 <= self.mix_ratio <= 1:
            _fail("mix_ratio", "a number in [0, 1]", self.mix_ratio)
        for field in ("qk_norm", "ln_scaling", "sigma_reparam", "tie_embeddings", "bias",
                      "muon_per_head"):
            if not isinstance(getattr(self, field), bool):
                _fail(field, "true or false", getattr(self, field))
        if self.ln_scaling and self.norm == "none":
            _fail("ln_scaling", "false when norm='none' (there is no norm output to scale)", True)
        if not _is_number(self.z_loss) or self.z_loss < 0:
            _fail("z_loss", "a number >= 0 (1e-4 in Wortsman et al.)", self.z_loss)
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            _fail("dropout", "a number in [0, 1)", self.dropout)
        if self.attn_scale not in ATTN_SCALES:
            _fail("attn_scale", f"one of {', '.join(ATTN_SCALES)}", self.attn_scale)
        if not _is_number(self.qk_clip) or self.qk_clip < 0:
            _fail("qk_clip", "a number >= 0 (the max logit tau; 0 turns QK-Clip off)",
                  self.qk_clip)
        if self.qk_clip and (self.qk_norm or self.sigma_reparam):
            field = "qk_norm" if self.qk_norm else "sigma_reparam"
            _fail(field, "false with qk_clip > 0 (rescaling W_q and W_k would not change the "
                  "logits it normalizes; use one of the two)", True)

    @property
    def d_residual(self) -> int:
        """Stored width of the residual stream: d_model - 1 under CRMSNorm (compressed)."""
        return self.d_model - 1 if self.norm == "crmsnorm" else self.d_model

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    def block_placement(self, layer: int) -> str:
        """'pre' | 'post' | 'peri' for 0-based `layer`; resolves 'mix' (Mix-LN)."""
        if self.placement != "mix":
            return self.placement
        return "post" if layer < round(self.mix_ratio * self.n_layer) else "pre"


def make_norm(config: GPTConfig, layer: int | None = None) -> nn.Module:
    """The residual-stream norm of `config`; wrapped in LayerNormScaling(1/sqrt(layer + 1))
    when config.ln_scaling and the norm belongs to a block (layer is not None)."""
    d = config.d_model
    if config.norm == "layernorm":
        norm: nn.Module = nn.LayerNorm(d, eps=1e-5, bias=config.bias)
    elif config.norm == "rmsnorm":
        norm = RMSNorm(d, eps=1e-5, bias=config.bias)
    elif config.norm == "crmsnorm":
        norm = CRMSNorm(d, eps=1e-5, bias=config.bias)
    else:
        return nn.Identity()
    if config.ln_scaling and layer is not None:
        norm = LayerNormScaling(norm, layer + 1)
    return norm


def _linear(config: GPTConfig, n_in: int, n_out: int) -> nn.Linear:
    cls = SigmaReparamLinear if config.sigma_reparam else nn.Linear
    return cls(n_in, n_out, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v projections (so that under
    qk-norm the q and k weights are each scale-invariant, REFERENCE §2).

    Set `record_stats = True` to compute attention explicitly on the next forwards and keep
    `stats = {"entropy": [n_head], "max_logit": [n_head]}` (detached): entropy is
    -sum_j A_ij log A_ij averaged over queries and batch; max_logit is the largest
    pre-softmax logit (scale included, future positions excluded) per head.

    With config.muon_per_head, the projection weights carry `muon_split` metadata that
    wdlab.optim.Muon reads: W_q, W_k, W_v "rows:n_head" (one d_head-row block per head), W_o
    "cols:n_head", so each head's block is orthogonalized on its own.

    With config.qk_clip > 0, every training forward also keeps `max_logit_seen` ([n_head],
    the running max since the last clip, no grad): one extra q k^T per layer, computed in
    query blocks, which wdlab.nn.qk_clip.apply_qk_clip reads after the optimizer step.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d_in, d = config.d_residual, config.d_model
        self.n_head, self.d_head = config.n_head, config.d_head
        self.q_proj = _linear(config, d_in, d)
        self.k_proj = _linear(config, d_in, d)
        self.v_proj = _linear(config, d_in, d)
        self.o_proj = _linear(config, d, d_in)
        if config.muon_per_head:
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                proj.weight.muon_split = f"rows:{config.n_head}"
            self.o_proj.weight.muon_split = f"cols:{config.n_head}"
        if config.qk_norm:  # per head, over d_head; RMSNorm when the model uses RMS norms
            norm_cls = RMSNorm if config.norm in ("rmsnorm", "crmsnorm") else nn.LayerNorm
            self.q_norm: nn.Module = norm_cls(self.d_head, eps=1e-5, bias=config.bias)
            self.k_norm: nn.Module = norm_cls(self.d_head, eps=1e-5, bias=config.bias)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        self.scale = 1.0 / (self.d_head if config.attn_scale == "mup" else math.sqrt(self.d_head))
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.record_stats = False
        self.stats: dict[str, torch.Tensor] | None = None
        self.qk_clip = float(config.qk_clip)
        self.max_logit_seen: torch.Tensor | None = None
        self.qk_clip_stats: dict[str, torch.Tensor] | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_norm(self._heads(self.q_proj(x)))
        k = self.k_norm(self._heads(self.k_proj(x)))
        v = self._heads(self.v_proj(x))
        p = self.dropout if self.training else 0.0
        if self.record_stats:
            y = self._explicit_attention(q, k, v, p)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, is_causal=True, scale=self.scale
            )
        if self.qk_clip and self.training:
            seen = self.stats["max_logit"] if self.record_stats else self._max_logits(q, k)
            prev = self.max_logit_seen
            self.max_logit_seen = seen if prev is None else torch.maximum(prev, seen)
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.d_head)
        return self.resid_dropout(self.o_proj(y))

    @torch.no_grad()
    def _max_logits(self, q: torch.Tensor, k: torch.Tensor, block: int = 256) -> torch.Tensor:
        """Per head, the largest causal logit q_i . k_j * scale (j <= i) of this forward, in
        blocks of `block` queries so memory stays O(block * T)."""
        t = q.shape[-2]
        out = None
        for start in range(0, t, block):
            stop = min(start + block, t)
            logits = (q[:, :, start:stop] @ k[:, :, :stop].transpose(-2, -1)).float() * self.scale
            rows = torch.arange(start, stop, device=q.device)[:, None]
            future = torch.arange(stop, device=q.device)[None, :] > rows
            part = logits.masked_fill(future, float("-inf")).amax(dim=(0, 2, 3))
            out = part if out is None else torch.maximum(out, part)
        assert out is not None
        return out

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float
    ) -> torch.Tensor:
        t = q.shape[-2]
        logits = (q @ k.transpose(-2, -1)) * self.scale
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
        attn = logits.softmax(dim=-1)
        with torch.no_grad():
            entropy = -torch.special.xlogy(attn, attn).sum(-1)  # (B, H, T); 0 log 0 = 0
            self.stats = {
                "entropy": entropy.mean(dim=(0, 2)).detach(),
                "max_logit": logits.amax(dim=(0, 2, 3)).detach(),
            }
        if p > 0:
            attn = F.dropout(attn, p)
        return attn @ v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = _linear(config, config.d_residual, config.d_mlp)
        self.act = nn.GELU()
        self.proj = _linear(config, config.d_mlp, config.d_residual)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """One transformer layer; `placement` (resolved per layer) decides where the norms sit:
    pre x + F(N(x)); post N(x + F(x)); peri x + N_out(F(N(x)))."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.placement = config.block_placement(layer)
        self.norm_attn = make_norm(config, layer)
        self.attn = CausalSelfAttention(config)
        self.norm_mlp = make_norm(config, layer)
        self.mlp = MLP(config)
        if self.placement == "peri":
            self.norm_attn_out = make_norm(config, layer)
            self.norm_mlp_out = make_norm(config, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement == "pre":
            x = x + self.attn(self.norm_attn(x))
            return x + self.mlp(self.norm_mlp(x))
        if self.placement == "post":
            x = self.norm_attn(x + self.attn(x))
            return self.norm_mlp(x + self.mlp(x))
        x = x + self.norm_attn_out(self.attn(self.norm_attn(x)))
        return x + self.norm_mlp_out(self.mlp(self.norm_mlp(x)))


class GPT(nn.Module):
    """Decoder-only transformer: token + position embeddings, `n_layer` blocks, a final norm
    (absent when the last block is post-norm: its output is already normalized) and a
    linear head, tied to the token embedding by default."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_residual
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.context, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        last_post = config.block_placement(config.n_layer - 1) == "post"
        self.norm_f = nn.Identity() if last_post else make_norm(config)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=config.bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """nanoGPT's init: N(0, 0.02) for linears and embeddings, zero biases, and the
        residual-writing projections at 0.02/sqrt(2 n_layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            block.attn.o_proj.weight.normal_(0.0, std)
            block.mlp.proj.weight.normal_(0.0, std)
        for module in self.modules():
            if isinstance(module, SigmaReparamLinear):
                module.reset_sigma()

    @property
    def width(self) -> int:
        return self.config.d_model

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        """A fixed batch of token ids (its own generator: the global RNG is left alone)."""
        gen = torch.Generator().manual_seed(0)
        idx = torch.randint(
            0, self.config.vocab_size, (batch_size, self.config.context), generator=gen
        )
        return idx.to(self.wte.weight.device)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.ndim != 2:
            raise ValueError(
                f"GPT.forward expects token ids of shape [B, T], got {tuple(idx.shape)}"
            )
        t = idx.shape[1]
        if t > self.config.context:
            raise ValueError(
                f"sequence length {t} exceeds GPTConfig.context={self.config.context}; "
                "crop the input or raise context"
            )
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy + z_loss * mean(logsumexp(logits)^2) (Wortsman et al.), both
        over positions whose target is not -100 (cross_entropy's ignore_index)."""
        flat = logits.reshape(-1, logits.shape[-1])
        tgt = targets.reshape(-1)
        loss = F.cross_entropy(flat, tgt, ignore_index=-100)
        if self.config.z_loss > 0:
            log_z = torch.logsumexp(flat[tgt != -100].float(), dim=-1)
            loss = loss + self.config.z_loss * log_z.pow(2).mean()
        return loss


def _base_norm(module: nn.Module) -> tuple[nn.Module, float]:
    """(norm, output scale) of a possibly LayerNormScaling-wrapped norm."""
    if isinstance(module, LayerNormScaling):
        return module.norm, module.scale
    return module, 1.0


@torch.no_grad()
def convert_pre_ln(model: GPT, norm: str = "rmsnorm") -> GPT:
    """The Pre-RMSNorm or Pre-CRMSNorm GPT that computes exactly what the Pre-LN `model`
    computes (Jiang et al.; REFERENCE §5), as a new model (tie_embeddings becomes False).

    LayerNorm(x) == LayerNorm(x - mean(x)), so the residual stream can be kept zero-mean:
    every write to it (embeddings, o_proj, mlp.proj) is centered, and then LayerNorm equals
    RMSNorm there. For "rmsnorm" the norm gains and biases are copied. For "crmsnorm" the
    stream is also stored in d-1 coordinates (writers drop their last output row) and each
    norm's gain, bias and LayerNorm-Scaling factor are folded into the linears that read it,
    whose d-th input column is folded into the others. The head is untied because centering
    the embedding would change the logits of a tied head. Exact up to float rounding while
    dropout is inactive (dropout does not preserve a zero mean).
    """
    cfg = model.config
    if norm not in ("rmsnorm", "crmsnorm"):
        raise ValueError(f"norm must be 'rmsnorm' or 'crmsnorm', got {norm!r}")
    for field, want in (("norm", "layernorm"), ("placement", "pre")):
        if getattr(cfg, field) != want:
            raise ValueError(
                f"convert_pre_ln needs config.{field}={want!r}, got {getattr(cfg, field)!r}"
            )
    for field in ("qk_norm", "sigma_reparam"):
        if getattr(cfg, field):
            raise ValueError(f"convert_pre_ln does not support config.{field}=True; set it False")
    ref = model.wte.weight
    with torch.random.fork_rng(devices=[]):
        new = GPT(dataclasses.replace(cfg, norm=norm, tie_embeddings=False))
    new = new.to(device=ref.device, dtype=ref.dtype).train(model.training)
    compress = norm == "crmsnorm"

    def center_rows(w: torch.Tensor) -> torch.Tensor:  # embeddings: (n, d), one vector per row
        w = w - w.mean(dim=1, keepdim=True)
        return w[:, :-1] if compress else w

    def center_out(lin_src: nn.Linear, lin_dst: nn.Linear) -> None:  # writers: (d, n_in)
        w = lin_src.weight - lin_src.weight.mean(dim=0, keepdim=True)
        lin_dst.weight.copy_(w[:-1] if compress else w)
        if lin_src.bias is not None:
            b = lin_src.bias - lin_src.bias.mean()
            lin_dst.bias.copy_(b[:-1] if compress else b)

    def read(
        norm_src: nn.Module, norm_dst: nn.Module, readers: list[tuple[nn.Linear, nn.Linear]]
    ) -> None:
        ln, scale = _base_norm(norm_src)
        dst, _ = _base_norm(norm_dst)
        if not compress:
            dst.weight.copy_(ln.weight)
            if ln.bias is not None:
                dst.bias.copy_(ln.bias)
            for src, out in readers:
                out.load_state_dict(src.state_dict())
            return
        dst.weight.fill_(1.0)
        if dst.bias is not None:
            dst.bias.zero_()
        for src, out in readers:
            wg = src.weight * ln.weight  # fold the gain: W diag(gamma)
            out.weight.copy_(wg[:, :-1] - wg[:, -1:])  # input d = -sum of the others
            if ln.bias is not None:
                out_bias = scale * (src.weight @ ln.bias)
                if src.bias is not None:
                    out_bias = out_bias + src.bias
                out.bias.copy_(out_bias)

    new.wte.weight.copy_(center_rows(model.wte.weight))
    new.wpe.weight.copy_(center_rows(model.wpe.weight))
    for b_src, b_dst in zip(model.blocks, new.blocks, strict=True):
        a_src, a_dst = b_src.attn, b_dst.attn
        qkv = [
            (a_src.q_proj, a_dst.q_proj),
            (a_src.k_proj, a_dst.k_proj),
            (a_src.v_proj, a_dst.v_proj),
        ]
        read(b_src.norm_attn, b_dst.norm_attn, qkv)
        center_out(a_src.o_proj, a_dst.o_proj)
        read(b_src.norm_mlp, b_dst.norm_mlp, [(b_src.mlp.fc, b_dst.mlp.fc)])
        center_out(b_src.mlp.proj, b_dst.mlp.proj)
    read(model.norm_f, new.norm_f, [(model.lm_head, new.lm_head)])
    return new
