"""Where the diffusion generators run: "auto" is CUDA in float16 where available, else the CPU in float32."""

import torch


def resolve_device(device: str) -> tuple[torch.device, torch.dtype]:
    resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                            ("cpu" if device == "auto" else device))
    return resolved, torch.float16 if resolved.type == "cuda" else torch.float32
