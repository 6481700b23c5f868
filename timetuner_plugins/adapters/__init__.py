"""Adapters: wrappers that give k-diffusion's denoiser interface to ε-, v-, x₀- and flow networks (our own, k-diffusion's and diffusers' models)."""
