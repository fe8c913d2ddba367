"""One DiT360 training step's model call and loss (flow matching on circularly padded tokens)."""

from __future__ import annotations

import torch

from pano_core.diffusion.schedules import add_noise, velocity_target
from pano_core.errors import PanoInputError

from .. import losses as L
from ..config import get
from .data import Batch

# ----------------------------------------------------------------------------------- the model call


def _velocity(model, pipe, grid, latents: torch.Tensor, sigma: torch.Tensor, prompt_embeds, pooled, img_ids, guidance):
    """Velocity on circularly padded tokens, cropped and unpacked: (B, 16, lh, lw) -> same."""
    tokens = grid.pad(grid.pack(latents))
    dt = prompt_embeds.dtype
    out = model(
        hidden_states=tokens.to(dt),
        timestep=sigma.to(dt),
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=prompt_embeds,
        txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=tokens.device, dtype=img_ids.dtype),
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return grid.unpack(grid.crop(out)).float()


def _active(cfg: dict, term: str, step: int, epoch: int) -> bool:
    if float(get(cfg, f"losses.{term}.weight")) == 0.0:
        return False
    fs = get(cfg, f"losses.{term}.from_step")
    if fs is not None:
        return step >= int(fs)
    return epoch >= int(get(cfg, f"losses.{term}.from_epoch"))


LOSS_TERMS = ("base", "yaw", "cube", "perspective")


def compute_loss(cfg: dict, model, pipe, grid, b: Batch, step: int, img_ids, guidance) -> tuple[torch.Tensor, dict]:
    """The total loss of a batch (mean over its samples) and each term's mean over the samples
    it applies to (0 when none; always the same keys, for the all-reduce of the logs)."""
    x_t = add_noise(b.x0, b.noise, b.sigma)
    target = velocity_target(b.x0, b.noise)
    nb = x_t.shape[0]
    pano = (~b.is_persp).float()
    persp = b.is_persp.float()
    yaw_on = torch.tensor([_active(cfg, "yaw", step, e) for e in b.epochs], device=x_t.device).float() * pano
    cube_on = torch.tensor([_active(cfg, "cube", step, e) for e in b.epochs], device=x_t.device).float() * pano
    form = get(cfg, "losses.yaw.form")
    if form not in ("published", "equivariance"):
        raise PanoInputError(f"losses.yaw.form: expected published or equivariance, got {form!r}")
    equi = bool(yaw_on.any()) and form == "equivariance"
    g = guidance[:nb] if guidance is not None else None
    if equi:
        # one model call on [x_t, R x_t] (a second forward through a DDP model would be unsafe)
        cols = torch.tensor([2 * (round(a * grid.w / 360.0) % grid.w) for a in b.yaw_angles])
        rolled = torch.cat([L.roll_latent(x_t[i : i + 1], int(c)) for i, c in enumerate(cols)])
        both = _velocity(model, pipe, grid, torch.cat([x_t, rolled]), torch.cat([b.sigma, b.sigma]),
                         torch.cat([b.prompt_embeds] * 2), torch.cat([b.pooled] * 2), img_ids,
                         None if g is None else torch.cat([g, g]))
        pred, pred_rolled = both[:nb], both[nb:]
    else:
        pred = _velocity(model, pipe, grid, x_t, b.sigma, b.prompt_embeds, b.pooled, img_ids, g)
    zero = torch.zeros(nb, device=x_t.device)
    terms = {k: zero for k in LOSS_TERMS}
    base = L.base_loss(pred, target, b.mask, reduction="none")
    total = float(get(cfg, "losses.base")) * base * pano
    terms["base"] = base
    if yaw_on.any():
        if equi:
            # the model was already evaluated on the rolled input (R x_t) above
            yaw = L.yaw_loss_equivariance(lambda z: pred_rolled, x_t, target, cols, mask=b.mask, reduction="none")
        else:
            yaw = L.yaw_loss_published(pred, target, torch.tensor(b.yaw_angles), mask=b.mask, reduction="none")
        total = total + float(get(cfg, "losses.yaw.weight")) * yaw * yaw_on
        terms["yaw"] = yaw
    if cube_on.any():
        cube = L.cube_loss(pred, target, mask=b.mask, reduction="none")
        total = total + float(get(cfg, "losses.cube.weight")) * cube * cube_on
        terms["cube"] = cube
    if persp.any():
        cov = b.mask if b.mask is not None else torch.ones_like(pred[:, :1])
        pl = L.perspective_loss(pred, target, cov, reduction="none")
        total = total + float(get(cfg, "losses.perspective.weight")) * pl * persp
        terms["perspective"] = pl
    on = {"base": pano, "yaw": yaw_on, "cube": cube_on, "perspective": persp}
    logs = {k: (terms[k].detach() * on[k]).sum() / on[k].sum().clamp_min(1) for k in LOSS_TERMS}
    return total.sum() / nb, logs
