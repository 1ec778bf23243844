"""The original's training objective (magenta `ContextDiffusionModel.loss_fn`; training-spec.md §3).

    x0 = target features in [-1, 1];  t ~ U[0, 1);  lambda = -2 ln tan(a t + b)  (from +20 at t=0 to -20 at 1)
    z  = sqrt(sigmoid(lambda)) x0 + sqrt(sigmoid(-lambda)) eps,   eps ~ N(0, I)
    eps_hat = decoder(encoders(tokens, context), z, t)            (both conditions zeroed for dropped rows)
    loss = |eps_hat - eps|, averaged over frames, bins and examples

The original sums |eps_hat - eps| over the batch; the mean here is the same objective scaled by a constant
(Adafactor's updates do not depend on the loss's scale), and reads as a number per value: a network that
predicts 0 scores sqrt(2 / pi) = 0.798.

Dropped rows (classifier-free guidance): the original zeroes the tokens and the context mask, so every key
is masked and its decoder zeroes the cross-attention output. Here both encoder outputs are multiplied by 0
(as the sampler's unconditional branch does): with no biases, keys and values are 0 and cross-attention adds
exactly 0, with zero gradient into the encoders from those rows, as in the original.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spectrosynth.sampling.schedule import _A, _B
from spectrosynth.training.examples import Batch


def logsnr(t: torch.Tensor) -> torch.Tensor:
    """lambda(t) = -2 ln tan(a t + b) (spectrosynth.sampling.schedule.logsnr), elementwise."""
    return -2.0 * torch.log(torch.tan(_A * t + _B))


def diffuse(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = alpha_t x0 + sigma_t eps for a batch: x0, eps (B, F, C), t (B,)."""
    lam = logsnr(t.to(torch.float32))[:, None, None]
    return torch.sqrt(torch.sigmoid(lam)) * x0 + torch.sqrt(torch.sigmoid(-lam)) * eps


ZERO_PREDICTOR_LOSS = math.sqrt(2.0 / math.pi)  # E|eps| for eps ~ N(0, 1): the loss of predicting 0


class DiffusionObjective(nn.Module):
    """The three networks together, returning each example's loss: the module a run trains (and DDP wraps).

    train_encoders False: the encoders are frozen (eval mode, no gradients) and run once per example without
    building a graph; only the decoder learns.
    """

    def __init__(
        self,
        notes_encoder: nn.Module,
        context_encoder: nn.Module,
        decoder: nn.Module,
        train_encoders: bool = True,
    ):
        super().__init__()
        self.notes_encoder, self.context_encoder, self.decoder = notes_encoder, context_encoder, decoder
        self.train_encoders = train_encoders
        if not train_encoders:
            for net in (notes_encoder, context_encoder):
                net.requires_grad_(False)

    def train(self, mode: bool = True) -> DiffusionObjective:
        super().train(mode)
        if not self.train_encoders:  # frozen encoders never use dropout
            self.notes_encoder.eval()
            self.context_encoder.eval()
        return self

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodings (B, T + 256, C), notes then context, zeroed for dropped rows, and the key mask."""
        notes = self.notes_encoder(batch.tokens, batch.token_mask)
        has_context = batch.context_mask.any(dim=1, keepdim=True)  # (B, 1)
        # A row without context frames still needs one valid key in the encoder (else NaN); its output is
        # masked out of the decoder's cross-attention, so any finite value will do.
        encoder_mask = batch.context_mask | ~has_context
        context = self.context_encoder(batch.context.to(notes.dtype), encoder_mask)
        keep = batch.keep[:, None, None].to(notes.dtype)
        encodings = torch.cat([notes, context], dim=1) * keep
        return encodings, torch.cat([batch.token_mask, batch.context_mask], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Each example's mean |eps_hat - eps|, (B,)."""
        if self.train_encoders:
            encodings, key_mask = self.encode(batch)
        else:
            with torch.no_grad():
                encodings, key_mask = self.encode(batch)
        z = diffuse(batch.target, batch.eps, batch.t)
        dtype = self.decoder.input_proj.weight.dtype
        films = self.decoder.conditioning(batch.t)
        kvs = self.decoder.cross_keys_values(encodings.to(dtype))
        eps_hat = self.decoder(z.to(dtype), films, kvs, key_mask)
        return (eps_hat.float() - batch.eps).abs().mean(dim=(1, 2))
