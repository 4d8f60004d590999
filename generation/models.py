"""The diffusion models the generators load unless told otherwise: hub ids (a local directory works too)."""

DIFFSTYLE_MODEL = "xutongda/adm_imagenet_256x256_unconditional"
CUT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the old runwayml id is gone
