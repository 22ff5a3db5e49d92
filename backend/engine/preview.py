"""Cheap previews of the latents during denoising: a linear map from latent channels to RGB.

No decoder pass: a 4x3 matrix per latent space turns a (4, h, w) latent into an (h, w) RGB image at
1/8 of the output size, costing microseconds. The matrices are least-squares fits of decoded images
against their latents, as published for the SD 1.x/2.x and SDXL VAEs.
"""

from __future__ import annotations

# rows: latent channels; columns: R, G, B contributions (image values in -1..1).
SD_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
SDXL_LATENT_RGB = (
    (0.3920, 0.4054, 0.4549),
    (-0.2634, -0.0196, 0.0653),
    (0.0568, 0.1687, -0.0755),
    (-0.3112, -0.2359, -0.2076),
)


def latents_to_rgb(latents, family: str = "sd"):
    """A PIL image of the first latent of a (B, 4, h, w) tensor; None for other latent spaces."""
    import torch
    from PIL import Image

    if latents.ndim != 4 or latents.shape[1] != 4:
        return None
    factors = torch.tensor(SDXL_LATENT_RGB if family == "sdxl" else SD_LATENT_RGB, dtype=torch.float32)
    first = latents[0].detach().to("cpu", torch.float32)
    rgb = torch.einsum("chw,cr->hwr", first, factors)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")
