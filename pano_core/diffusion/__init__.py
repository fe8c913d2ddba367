"""Model-agnostic diffusion pieces every generator (DiT360, JoPano/Sana) and the trainer share.

Lives here: schedules, the sampling loop, RF-inversion, VAE helpers, loading, LoRA keys, masks,
the token grid, a generator base class. Not here: anything tied to one model family (Flux calls, Sana adapters) -- those
stay in ``pano_core.dit360`` / ``pano_core.jopano``; nothing here imports a sibling generator.

Map (module -> main names):

- ``tokens``: :class:`TokenGrid` (``from_pixels``/``from_latent``; ``pad``/``crop``/``resync``
  tokens, ``pad_ids``/``crop_ids``, ``pad_latent``/``crop_latent``/``resync_latent``,
  ``pack``/``unpack``, ``tokens``/``padded_tokens``; patch 1 or 2, images or video
  ``(B, C, T, H, W)``), ``check_padding``, ``ID_MODES``
- ``circular``: ``pad_latent``, ``crop_latent``, ``resync_latent``, ``pad_span``,
  ``decode_circular``, ``encode_circular``, ``periodic_reference``, ``DEFAULT_WRAP_COLS`` (8),
  ``wrap_cols_for`` -- wrap padding of latent-resolution tensors along the width
- ``schedules``: ``shift_mu``, ``time_shift``, ``constant_shift``, ``default_sigmas``,
  ``schedule_mu``, ``set_timesteps``, ``sigma_schedule`` (sampling); ``sample_sigmas``,
  ``add_noise``, ``velocity_target`` (flow-matching training)
- ``sampling``: ``sample`` (velocity function in, latents out; CFG, ``prepare``, per-element
  ``timestep_hook`` / ``clean`` elements at t=0, ``callback``, ``interrupt``, ``progress``),
  ``cfg_combine``, ``euler_step``, ``scheduler_step``, ``SamplingInterrupted``
- ``rf_inversion``: ``invert_latent``, ``edit_latent``, ``outpaint_init``, ``seeded_noise``,
  ``velocity_from_denoiser``, ``eta_schedule``, ``InversionResult``, ``EditResult``
- ``vae``: ``vae_encode``, ``vae_decode`` (model-space scale/shift, ``wrap_cols`` circular
  variants; KL and DC-AE), ``set_tiling``, ``scale_shift``
- ``loading``: ``resolve_device``, ``resolve_dtype``, ``resolve_source``, ``load_pipeline``,
  ``load_component`` (folder / hub id / single ``.safetensors`` file), ``place`` (device,
  offload), ``resolve_weight_file``, ``module_device``, ``model_index_class``, ``OFFLOAD_MODES``
- ``lora``: ``load_lora``, ``convert_lora_state_dict``, ``LoraReport`` (diffusers pipelines);
  ``peft_to_transformer_prefix`` (``base_model.model.`` -> ``transformer.`` keys);
  ``match_lora_modules``, ``group_lora_keys``, ``lora_module``, ``LoraModuleMatch`` (ComfyUI)
- ``masks``: ``image_mask_to_latent``, ``latent_mask_to_tokens``, ``keep_mask_for_tokens``,
  ``replace_kept_tokens``, ``place_view``
- ``prompts``: ``PANORAMA_PREFIX``, ``add_prompt_prefix``
- ``generator``: ``DiffusersGenerator`` -- base of generators wrapping a diffusers pipeline
  (components, ``device`` under offload, ``set_memory``, ``load_lora`` / ``set_lora_scale``,
  ``progress_bar``); ``DiT360Pipeline`` subclasses it

Import from the submodules (``from pano_core.diffusion.tokens import TokenGrid``); importing
this package loads nothing heavy (diffusers is imported only by the functions that need it).
"""
