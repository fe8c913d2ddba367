"""``pano360-train dit360``: DiT360's hybrid LoRA training of FLUX.1 (accelerate, 1..N GPUs).

One optimizer step, as DiT360's official code (``train.py``, ``src/dit360.py``) does it:

1. each process takes its samples of the global sample stream (sample ``n`` of an epoch is
   item ``data_order(seed, epoch)[n]``; process ``r`` of ``R`` with batch ``B`` takes the
   samples ``k*R*B + r*B + j``), and every random draw of a sample (flip, yaw roll, caption
   dropout, timestep, noise, yaw-loss angle) comes from ``(seed, sample index)``;
2. the latent is the cached **circular** VAE encode (flip = the cached encode of the flipped
   image), rolled by whole token columns;
3. flow matching (``pano_core.diffusion.schedules``): ``x_t = (1 - s) x0 + s n`` with ``s``
   from the configured timestep sampling and shift (``sample_sigmas``), target ``n - x0``;
4. the packed tokens are circularly padded (``padding.pad`` token columns per side, wrapped
   position ids: ``pano_core.diffusion.tokens.TokenGrid``), the transformer predicts on the padded tokens, the
   prediction is cropped and unpacked before the loss;
5. loss = base MSE + yaw loss (published or equivariance form) + cube loss for panoramas (each
   from its epoch/step), perspective masked MSE for the perspective-guidance canvases
   (``training/losses.py``).

Only the LoRA is trained (PEFT on ``attn.to_q/to_k/to_v/to_out.0``). Checkpoints (every N,
keep K, atomic), fixed-seed samples with seam metrics, a loss log and plot, TensorBoard events,
and at the end ``adapter_model.safetensors`` + ``adapter_config.json`` (DiT360's PEFT format with
``transformer.`` keys and alpha folded into ``lora_B``).

Modules: ``data`` (data plan, caches, batches), ``step`` (the model call and the loss),
``trainer`` (the loop), ``sampling`` (samples and ``pano360-train sample``).
"""

from .data import TRAINER, DataPlan, PlanItem, build_caches, load_pipeline
from .sampling import render_samples, sample_from_run
from .step import LOSS_TERMS, compute_loss
from .trainer import train

__all__ = ["TRAINER", "DataPlan", "PlanItem", "LOSS_TERMS", "build_caches", "compute_loss", "load_pipeline",
           "render_samples", "sample_from_run", "train"]
